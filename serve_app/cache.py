"""Answer cache checked by the ingress before any downstream call.

Exact hits match the normalised question. Semantic hits match a rephrasing whose query embedding
is at or above a cosine threshold *and* whose content words are the cached question's, in the same
order up to one moved phrase (`same_content_words`). The second test exists because embeddings
barely see role swaps, antonyms and negations: on SQuAD 2.0, "Who moved his court from Warsaw to
Krakow?" and "...from Krakow to Warsaw?" have cosine 0.999, and a cosine threshold alone gives false
hits at every value below 1.0 (benchmarks/semantic_cache_threshold.py, README). Both kinds of hit
are confined to one `CacheScope`: index version, filters, top_k, the answering pipeline and the
caller's access scope. A new index version therefore can
never return an answer built from the old one, and old versions' entries simply expire.

Two stores share one interface: Redis (shared by all ingress replicas; fail-open, with short
timeouts and a pause after a failure) and an in-process TTL/LRU cache (the default without Redis).

Redis layout (all under `key_prefix`, so tests and tenants of one Redis can use their own):
    {prefix}:{schema}:{version}:a:{exact}      the cached response (JSON), TTL ttl_s
    {prefix}:{schema}:{version}:s:{partition}  list, newest first: exact id (16 bytes), question
                                               length (2) and text (UTF-8), float16 vector
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
import unicodedata
from collections import Counter, deque
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal, Protocol

import numpy as np

from serve_app.redis_conn import FailFastRedis, RedisUnavailable

KEY_SCHEMA = "3"  # bump when the cached response or entry format changes
_SPACES = re.compile(r"\s+")
_TRAILING_PUNCTUATION = re.compile(r"[\s?!.。？！]+$")
_WORD = re.compile(r"\w[\w'’\-]*")
# Words whose presence or absence does not change what is asked. Prepositions, negations and
# comparatives are deliberately not here: "from"/"to", "by", "not", "more" change answers.
_FUNCTION_WORDS = frozenset(
    "a an the of do does did is are was were be been being has have had that this these those it its "
    "there their they can could would will shall should may might must in on at for as and or".split()
)
_QUESTION_WORDS = {"which": "what", "whom": "who"}
_MAX_WORDS_FOR_MOVES = 40


def normalize_question(question: str) -> str:
    """Case, Unicode form, whitespace and trailing punctuation do not change a question."""
    text = unicodedata.normalize("NFKC", question).casefold()
    return _TRAILING_PUNCTUATION.sub("", _SPACES.sub(" ", text).strip())


@lru_cache(maxsize=4096)
def content_words(question: str) -> tuple[str, ...]:
    """Stemmed content words in order ('which' counts as 'what'), possessive 's dropped."""
    words = [re.sub(r"['’]s$", "", w) for w in _WORD.findall(normalize_question(question))]
    kept = [_QUESTION_WORDS.get(w, w) for w in words if w not in _FUNCTION_WORDS]
    return tuple(_stemmer().stemWords(kept))


@lru_cache(maxsize=1)
def _stemmer() -> Any:
    import Stemmer

    return Stemmer.Stemmer("english")


def same_content_words(first: str, second: str) -> bool:
    """True when both questions have the same content words in the same order, or in an order
    one moved phrase apart ("Employees get how many days?" / "How many days do employees get?").
    Swapped roles ("from A to B" / "from B to A") and changed words are not the same."""
    a, b = content_words(first), content_words(second)
    if a == b:
        return True
    if Counter(a) != Counter(b) or len(a) > _MAX_WORDS_FOR_MOVES:
        return False
    n = len(a)
    for start in range(n):
        for end in range(start + 1, n + 1):
            rest = a[:start] + a[end:]
            block = a[start:end]
            for position in range(len(rest) + 1):
                if rest[:position] + block + rest[position:] == b:
                    return True
    return False


def _digest(value: Any, size: int = 32) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()[:size]


def pipeline_identity(settings: Any) -> str:
    """Everything in the settings that changes an answer for the same question and index version:
    the generator (endpoint, model, parameters) and how passages are retrieved and reranked."""
    generator = f"openai:{settings.llm_base_url}:{settings.llm_model}" if settings.llm_base_url else "extractive"
    return _digest(
        {
            "generator": generator,
            "generation": settings.generator.model_dump(),
            "retrieval": settings.retrieval.model_dump(exclude={"reload_check_interval_s"}),
            "rerank": settings.rerank.model_dump(),
            "query_instruction": settings.embedding_query_instruction,
        },
        16,
    )


@dataclass(frozen=True)
class CacheScope:
    """All that must match, besides the question, for a cached answer to be the right one."""

    index_version: str
    filters: dict[str, Any] | None
    top_k: int
    pipeline: str
    access: str

    @property
    def partition(self) -> str:
        return _digest([self.filters, self.top_k, self.pipeline, self.access])

    def exact_id(self, question: str) -> str:
        return _digest([self.partition, normalize_question(question)])


@dataclass
class CacheHit:
    response: dict[str, Any]
    kind: Literal["exact", "semantic"]
    similarity: float | None = None


class CacheUnavailable(Exception):
    """The store cannot be used right now; the caller answers uncached."""


class CacheStore(Protocol):
    backend: str

    async def get(self, key: str) -> bytes | None: ...
    async def put(self, key: str, value: bytes, list_key: str | None, entry: bytes | None, ttl_s: int, max_entries: int) -> None: ...
    async def entries(self, list_key: str, limit: int) -> list[bytes]: ...
    async def ping(self) -> bool: ...
    async def purge(self, pattern: str) -> int: ...


class RedisCacheStore:
    """The shared cache: every store failure raises CacheUnavailable fast (see FailFastRedis)."""

    backend = "redis"

    def __init__(self, redis: FailFastRedis):
        self.redis = redis

    async def _call(self, operation: Any) -> Any:
        try:
            return await self.redis.call(operation)
        except RedisUnavailable as exc:
            raise CacheUnavailable(str(exc)) from None

    async def get(self, key: str) -> bytes | None:
        return await self._call(lambda r: r.get(key))

    async def put(self, key: str, value: bytes, list_key: str | None, entry: bytes | None, ttl_s: int, max_entries: int) -> None:
        async def write(r: Any) -> None:
            pipe = r.pipeline(transaction=False)  # one round trip
            pipe.set(key, value, ex=ttl_s)
            if list_key is not None and entry is not None:
                pipe.lpush(list_key, entry)
                pipe.ltrim(list_key, 0, max_entries - 1)
                pipe.expire(list_key, ttl_s)
            await pipe.execute()

        await self._call(write)

    async def entries(self, list_key: str, limit: int) -> list[bytes]:
        return await self._call(lambda r: r.lrange(list_key, 0, limit - 1))

    async def ping(self) -> bool:
        return await self.redis.ping()

    async def purge(self, pattern: str) -> int:
        async def delete(r: Any) -> int:
            removed = 0
            batch: list[Any] = []
            async for key in r.scan_iter(match=pattern, count=500):
                batch.append(key)
                if len(batch) >= 500:
                    removed += await r.unlink(*batch)
                    batch = []
            if batch:
                removed += await r.unlink(*batch)
            return removed

        return await self._call(delete)


class LocalCacheStore:
    """In-process TTL/LRU cache: one per ingress replica, used when no Redis is configured."""

    backend = "local"
    connected = True

    def __init__(self, max_entries: int = 2048, ttl_s: int = 3600):
        from cachetools import TTLCache

        self._answers: TTLCache = TTLCache(maxsize=max_entries, ttl=ttl_s)
        self._lists: TTLCache = TTLCache(maxsize=max_entries, ttl=ttl_s)

    async def get(self, key: str) -> bytes | None:
        return self._answers.get(key)

    async def put(self, key: str, value: bytes, list_key: str | None, entry: bytes | None, ttl_s: int, max_entries: int) -> None:
        self._answers[key] = value
        if list_key is not None and entry is not None:
            entries = self._lists.get(list_key) or deque(maxlen=max_entries)
            entries.appendleft(entry)
            self._lists[list_key] = entries  # re-set: the list lives ttl_s after its newest entry

    async def entries(self, list_key: str, limit: int) -> list[bytes]:
        return list(self._lists.get(list_key) or ())[:limit]

    async def ping(self) -> bool:
        return True

    async def purge(self, pattern: str) -> int:
        import fnmatch

        removed = 0
        for table in (self._answers, self._lists):
            for key in [k for k in list(table.keys()) if fnmatch.fnmatchcase(k, pattern)]:
                table.pop(key, None)
                removed += 1
        return removed


class AnswerCache:
    """Looks up and stores whole query responses; never raises for a store failure."""

    def __init__(
        self,
        store: CacheStore,
        ttl_s: int = 3600,
        semantic: bool = True,
        semantic_threshold: float = 0.95,
        semantic_max_entries: int = 256,
        key_prefix: str = "rag:cache",
    ):
        self.store = store
        self.ttl_s = ttl_s
        self.semantic = semantic
        self.semantic_threshold = semantic_threshold
        self.semantic_max_entries = semantic_max_entries
        self.key_prefix = key_prefix

    @classmethod
    def from_settings(cls, settings: Any, redis: FailFastRedis | None = None) -> AnswerCache:
        """Redis when `redis` is given (the replica's shared pool), else the in-process store."""
        config = settings.cache
        store: CacheStore
        if redis is not None:
            store = RedisCacheStore(redis)
        else:
            store = LocalCacheStore(config.local_max_entries, config.ttl_s)
        return cls(store, config.ttl_s, config.semantic, config.semantic_threshold, config.semantic_max_entries, config.key_prefix)

    def version_prefix(self, index_version: str | None = None) -> str:
        return f"{self.key_prefix}:{KEY_SCHEMA}:{index_version or '*'}"

    def _answer_key(self, scope: CacheScope, exact_id: str) -> str:
        return f"{self.version_prefix(scope.index_version)}:a:{exact_id}"

    def _list_key(self, scope: CacheScope) -> str:
        return f"{self.version_prefix(scope.index_version)}:s:{scope.partition}"

    async def _load(self, key: str) -> dict[str, Any] | None:
        try:
            raw = await self.store.get(key)
        except CacheUnavailable:
            return None
        return json.loads(raw) if raw else None

    async def lookup_exact(self, scope: CacheScope, question: str) -> CacheHit | None:
        response = await self._load(self._answer_key(scope, scope.exact_id(question)))
        return CacheHit(response, "exact", 1.0) if response else None

    async def lookup_semantic(self, scope: CacheScope, question: str, vector: Any) -> CacheHit | None:
        if not self.semantic:
            return None
        try:
            entries = await self.store.entries(self._list_key(scope), self.semantic_max_entries)
        except CacheUnavailable:
            return None
        if not entries:
            return None
        try:
            ids, questions, matrix = _unpack_entries(entries)
        except (ValueError, struct.error):  # an entry this code did not write: never an error for the caller
            return None
        query = _unit(np.asarray(vector, dtype=np.float32))
        if matrix.shape[1] != query.shape[0]:
            return None
        similarities = matrix @ query
        # Best first; entries with other content words, or whose answer expired, are passed over.
        for position in np.argsort(-similarities):
            similarity = float(similarities[position])
            if similarity < self.semantic_threshold:
                break
            if not same_content_words(question, questions[position]):
                continue
            response = await self._load(self._answer_key(scope, ids[position]))
            if response:
                return CacheHit(response, "semantic", round(similarity, 4))
        return None

    async def store_response(self, scope: CacheScope, question: str, vector: Any | None, response: dict[str, Any]) -> None:
        exact_id = scope.exact_id(question)
        entry = None
        if self.semantic and vector is not None:
            text = normalize_question(question).encode()[:65535]
            vector_bytes = _unit(np.asarray(vector, dtype=np.float32)).astype("<f2").tobytes()
            entry = bytes.fromhex(exact_id) + struct.pack("<H", len(text)) + text + vector_bytes
        try:
            await self.store.put(
                self._answer_key(scope, exact_id),
                json.dumps(response).encode(),
                self._list_key(scope),
                entry,
                self.ttl_s,
                self.semantic_max_entries,
            )
        except CacheUnavailable:
            pass

    async def purge(self, index_version: str | None = None) -> int:
        """Deletes every cached answer (of one index version when given); raises CacheUnavailable."""
        return await self.store.purge(f"{self.version_prefix(index_version)}:*")

    async def status(self) -> dict[str, Any]:
        return {"backend": self.store.backend, "connected": await self.store.ping()}


def _unit(vector: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0 else vector


def _unpack_entries(entries: list[bytes]) -> tuple[list[str], list[str], np.ndarray]:
    ids, questions, vectors = [], [], []
    for entry in entries:
        (length,) = struct.unpack_from("<H", entry, 16)
        ids.append(entry[:16].hex())
        questions.append(entry[18 : 18 + length].decode(errors="replace"))
        vectors.append(np.frombuffer(entry, dtype="<f2", offset=18 + length))
    return ids, questions, np.stack(vectors).astype(np.float32)
