"""One ingest run: scan, diff against the current version's manifest, embed only what changed,
build the next version apart, flip the pointer, collect garbage, and audit everything."""

from __future__ import annotations

import json
import logging
import os
import queue
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from ingest_jobs.discovery import ScanResult, SkippedFile, SourceScanner
from ingest_jobs.pipeline import (
    MIN_CPU_SHARE,
    PIPELINE_COLUMNS,
    CpuPlan,
    ParseConfig,
    PipelineResources,
    build_dataset,
    file_row,
    files_per_block,
    group_files,
    node_cores,
    ocr_engine_label,
    parse_signature,
    plan_cpus,
)
from ingest_jobs.redaction import redactor_signature
from rag_core.audit import default_actor, utc_now
from rag_core.embedding import EmbeddingModel, EmbeddingModelSpec, resolve_spec, same_vector_space
from rag_core.index_store import (
    MANIFEST_COLUMNS,
    VersionBuilder,
    VersionedIndex,
    VersionInfo,
    indexed_texts,
    manifest_from_rows,
    read_parquet_version,
)
from rag_core.manifest import LEGACY_SOURCE, Manifest, ManifestDiff, ManifestEntry, diff_manifest, doc_key
from rag_core.parsing import DocumentParseError
from rag_core.settings import RAGSettings

log = logging.getLogger("ingest_jobs")


@dataclass
class IngestSummary:
    index_version: str | None
    files_seen: int = 0
    files_indexed: int = 0
    files_unchanged: int = 0
    files_deleted: int = 0
    files_failed: list[dict[str, str]] = field(default_factory=list)
    chunks_added: int = 0
    chunks_deleted: int = 0
    chunks_total: int = 0
    embedding_model: str = ""
    duration_s: float = 0.0
    previous_version: str | None = None
    new_version_created: bool = False
    files_ignored: int = 0
    # Unchanged files read again because what reads them changed (parser or library version, OCR
    # engine, PII settings): how many, and why.
    files_reparsed: int = 0
    reparse_reasons: dict[str, int] = field(default_factory=dict)
    # Indexed files with parts that yielded no text (a scanned page without OCR, an empty OCR page).
    files_incomplete: list[dict[str, str]] = field(default_factory=list)
    pii_redacted: dict[str, int] = field(default_factory=dict)  # PII type -> values redacted in this run
    full_rebuild_reason: str | None = None
    # Where the work ran: Ray node id -> files parsed there, and -> chunks embedded there.
    parse_nodes: dict[str, int] = field(default_factory=dict)
    embed_nodes: dict[str, int] = field(default_factory=dict)
    # What the run asked Ray for and why: CPUs free and cores when it started, the CPU requests,
    # parse concurrency, torch threads, blocks (see README, Ingest beside serving).
    resources: dict[str, Any] = field(default_factory=dict)
    # The named source this run mirrored, and documents per source in the index after it.
    source: str = ""
    sources: dict[str, int] = field(default_factory=dict)
    # Documents indexed before sources were named, adopted by this source (no re-embedding).
    files_adopted: int = 0
    # Kept versions dropped because they held a deleted document (--purge-deleted).
    versions_purged: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def chunking_record(settings: RAGSettings) -> dict[str, Any]:
    """How text becomes chunks: a change re-indexes everything. (What decides the text of each file,
    its parser, OCR engine and PII settings, is recorded per file: its parse signature.)"""
    return settings.chunking.model_dump()


def signature_parts(signature: str) -> dict[str, str]:
    """'pdf/3 pypdf 7.1.1; pii/2 redact 5cb5; ocr tesseract ...' -> {parser, pii, ocr}."""
    items = signature.split("; ") if signature else []
    named = {"parser": items[0]} if items else {}
    for item in items[1:]:
        named["ocr" if item.startswith("ocr ") else "pii" if item.startswith("pii") else item] = item
    return named


def signature_change(old: str, new: str) -> str:
    """Why a file's parse signature changed, e.g. 'parser: pdf/2 pypdf 6.0.0 -> pdf/2 pypdf 7.1.1'."""
    if not old:
        return "parse signature not recorded (indexed by an older release)"
    before, after = signature_parts(old), signature_parts(new)
    for key in ("parser", "pii", "ocr"):
        if before.get(key) != after.get(key):
            return f"{key}: {before.get(key, 'none')} -> {after.get(key, 'none')}"
    return f"{old} -> {new}"


def connect_ray(settings: RAGSettings) -> None:
    import ray

    if ray.is_initialized():
        return
    address = settings.ray_address or os.environ.get("RAY_ADDRESS")
    # address="local" starts a private cluster; ray.init() with no address would auto-join a
    # cluster found on this machine. Both avoid GCS on 6379, where Redis listens.
    ray.init(address=address or "local", log_to_driver=True, configure_logging=False)


def embed_gpus_per_actor(setting: float | str) -> float:
    """'auto': one GPU per embedding actor when the cluster has any GPU now, else the CPU."""
    if setting != "auto":
        return float(setting)
    import ray

    return 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0


class IngestStalled(RuntimeError):
    """The pipeline made no progress while Ray could not place the job's tasks or actors."""


def _gcs_address() -> str | None:
    import ray

    try:
        return ray.get_runtime_context().gcs_address
    except Exception:
        return None


def _cluster_status() -> Any:
    """Ray's view of the cluster (what `ray status` prints), or None where it cannot be read."""
    address = _gcs_address()
    if not address:
        return None
    try:
        from ray.autoscaler.v2.sdk import get_cluster_status

        return get_cluster_status(address)
    except Exception as exc:  # an internal-ish API: without it, sizing uses ray.available_resources()
        log.debug("cannot read Ray's cluster status: %s", exc)
        return None


@dataclass(frozen=True)
class ClusterCapacity:
    """What the cluster offers a job that starts now."""

    cpus_total: float
    cpus_free: float
    largest_free_on_a_node: float | None  # None: unknown
    cores: int  # the cores (not logical CPUs) of the nodes with CPUs
    nodes: int

    @classmethod
    def read(cls, wait_for_cpus: float = 0.0, settle_s: float = 5.0) -> ClusterCapacity:
        """Free CPUs now. ray.available_resources() already leaves out what others hold: Serve
        replicas, other jobs, and this job's own driver when it was submitted with
        --entrypoint-num-cpus. When less than `wait_for_cpus` is free, look again for up to
        `settle_s` (actors of a run that just ended in this process take a moment to go)."""
        import ray

        deadline = time.monotonic() + settle_s
        while True:
            total = ray.cluster_resources().get("CPU", 0.0)
            free = ray.available_resources().get("CPU", 0.0)
            if free >= wait_for_cpus or time.monotonic() >= deadline:
                break
            time.sleep(0.5)
        largest = None
        status = _cluster_status()
        if status is not None and status.active_nodes + status.idle_nodes:
            per_node = [n.available_resources().get("CPU", 0.0) for n in status.active_nodes + status.idle_nodes]
            largest = max(per_node)
            free = min(free, sum(per_node)) if per_node else free
        cores, nodes = cluster_cores()
        return cls(total, free, largest, cores, nodes)


def cluster_cores(timeout_s: float = 60.0) -> tuple[int, int]:
    """(cores, nodes) over the alive nodes with CPUs: one tiny task (0 CPUs, so it runs even on
    a full node) per node reads the cores that node's processes can run on. A node that does not
    answer in time counts with its logical CPUs."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0]
    probe = ray.remote(num_cpus=0, max_retries=0)(node_cores)
    refs = {n["NodeID"]: probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote() for n in nodes}
    ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout_s)
    ready = set(ready)
    cores = 0
    for node in nodes:
        ref = refs[node["NodeID"]]
        logical = max(1, int(node["Resources"]["CPU"]))
        try:
            cores += min(ray.get(ref), logical) if ref in ready else logical
        except Exception:
            cores += logical
    return max(1, cores), len(nodes)


def _shape(resources: dict[str, float] | None) -> tuple[tuple[str, float], ...]:
    """A resource request as a comparable key: CPU and GPU, rounded as Ray rounds them."""
    resources = resources or {}
    return tuple((name, round(float(resources[name]), 4)) for name in ("CPU", "GPU") if resources.get(name))


# Names Ray gives this pipeline's work: the parse tasks, and the embedding actors and their calls.
PIPELINE_TASK_NAMES = ("parse_and_chunk_batch", "EmbedChunks")


@dataclass
class JobWork:
    """This job's tasks and actors as Ray's state API sees them."""

    pending: dict[tuple[tuple[str, float], ...], str]  # shape -> what waits with it to be placed
    running: int  # pipeline tasks running now (parse tasks, embedding calls)


def _this_jobs_work() -> JobWork | None:
    """What of this job waits to be placed, and whether its pipeline runs anything (Ray's state
    API, through the dashboard); None where it cannot be read."""
    import ray

    try:
        from ray.util.state import list_actors, list_tasks

        job = ray.get_runtime_context().get_job_id()
        options = {"detail": True, "limit": 1000, "timeout": 10, "raise_on_missing_output": False}
        waiting = list_tasks(filters=[("job_id", "=", job), ("state", "=", "PENDING_NODE_ASSIGNMENT")], **options)
        creating = list_actors(filters=[("job_id", "=", job), ("state", "=", "PENDING_CREATION")], **options)
        running = list_tasks(filters=[("job_id", "=", job), ("state", "=", "RUNNING")], **options)
    except Exception as exc:
        log.debug("cannot read this job's tasks: %s", exc)
        return None
    pending: dict[tuple[tuple[str, float], ...], str] = {}
    for item in [*waiting, *creating]:
        what = getattr(item, "name", None) or getattr(item, "class_name", None) or "task"
        pending.setdefault(_shape(item.required_resources), str(what))
    ours = sum(1 for task in running if any(name in (task.name or "") for name in PIPELINE_TASK_NAMES))
    return JobWork(pending, ours)


def _alive_nodes(status: Any) -> int:
    return len(status.active_nodes) + len(status.idle_nodes)


class StallGuard:
    """Notices a pipeline that waits for resources it will not get: no batch for `timeout_s`, none
    of its parse tasks or embedding calls running, while Ray reports demands it cannot place
    (what `ray status` lists as pending) that are this job's: shaped like its parse tasks or
    embedding actors, or like any of its tasks and actors waiting for a node. Never while the
    cluster is starting nodes. Before failing, it logs the wait every `interval_s`, so a starved
    run is never silent. When a node has left the cluster since the run began, it fails after
    `node_lost_after_s` instead: the work was sized for the cluster as it was, and Ray Data does
    not shrink an actor pool to make room for the parse tasks feeding it, so such a wait does not
    end by itself."""

    def __init__(self, plan: CpuPlan, embed_num_gpus: float, timeout_s: float, interval_s: float, node_lost_after_s: float = 30.0):
        parse, embed = _shape({"CPU": plan.parse_num_cpus}), _shape({"CPU": plan.embed_num_cpus, "GPU": embed_num_gpus})
        self.ours = {parse: "parse tasks", embed: "embedding actors"}
        if parse == embed:
            self.ours[parse] = "parse tasks and embedding actors"
        self.timeout_s = timeout_s
        self.node_lost_after_s = min(node_lost_after_s, timeout_s)
        self.interval_s = min(interval_s, self.node_lost_after_s)
        status = _cluster_status()
        self.nodes_at_start = _alive_nodes(status) if status is not None else None
        self.last_progress = time.monotonic()
        self.last_look = 0.0
        self.unreadable_logged = False

    def progress(self) -> None:
        self.last_progress = time.monotonic()

    def check(self) -> None:
        now = time.monotonic()
        idle = now - self.last_progress
        if idle < self.interval_s or now - self.last_look < self.interval_s:
            return
        self.last_look = now
        status = _cluster_status()
        if status is None:
            if not self.unreadable_logged:
                self.unreadable_logged = True
                log.warning("cannot read Ray's pending resource demands; a run starved of resources is not detected")
            return
        demands = [r for d in status.resource_demands.ray_task_actor_demand for r in d.bundles_by_count]
        if not demands:
            return
        work = _this_jobs_work()
        if work is not None and work.running:  # a long parse, say: busy, not starved
            self.progress()
            return
        named = {**(work.pending if work is not None else {}), **self.ours}  # its own names for the requests it knows
        pending = [
            f"{r.count} x {dict(sorted(r.bundle.items()))} ({named[_shape(r.bundle)]})" for r in demands if _shape(r.bundle) in named
        ]
        if not pending:
            return
        free, total = status.available_resources(), status.total_resources()
        cluster = f"{free.get('CPU', 0):.2f} of {total.get('CPU', 0):g} CPUs free"
        if total.get("GPU") or any("GPU" in r.bundle for r in demands):
            cluster += f", {free.get('GPU', 0):g} of {total.get('GPU', 0):g} GPUs"
        growing = bool(status.pending_launches or status.pending_nodes)
        fields = {"idle_s": round(idle, 1), "pending": pending, "cluster": cluster, "nodes_starting": growing, "timeout_s": self.timeout_s}
        if growing:
            log.warning("waiting for nodes the cluster is starting", extra={"fields": fields})
            self.progress()
            return
        alive = _alive_nodes(status)
        if self.nodes_at_start is not None and alive < self.nodes_at_start and idle >= self.node_lost_after_s:
            raise IngestStalled(
                f"a node left the cluster during the run ({self.nodes_at_start} -> {alive} nodes) and the job's work no longer "
                f"fits on the rest: {'; '.join(pending)} pending, no progress for {idle:.0f} s ({cluster}). The current index "
                "version is unchanged; rerun the job once the node is back or enough CPUs are free"
            )
        if idle >= self.timeout_s:
            raise IngestStalled(
                f"no progress for {idle:.0f} s while Ray cannot place the job's work: {'; '.join(pending)} pending "
                f"({cluster}). Lower ingest.parse_num_cpus / ingest.embed_num_cpus (or set them to auto), free CPUs, or add "
                "a node; ingest.stall_timeout_s sets this limit"
            )
        log.warning("waiting for resources", extra={"fields": fields})


_DONE = object()


class _Failed:
    def __init__(self, exc: BaseException):
        self.exc = exc


def iter_with_guard(build: Callable[[], Any], batch_size: int, guard: StallGuard, poll_s: float = 1.0) -> Iterable[pa.Table]:
    """The batches of the dataset `build` makes, built and pulled on a thread so that this one can
    watch for a stall (Ray Data blocks for as long as a pending task or actor waits, which may be
    forever)."""
    batches: queue.Queue = queue.Queue(maxsize=4)

    def pump() -> None:
        try:
            for batch in build().iter_batches(batch_size=batch_size, batch_format="pyarrow"):
                batches.put(batch)
        except BaseException as exc:
            batches.put(_Failed(exc))
        else:
            batches.put(_DONE)

    threading.Thread(target=pump, name="ingest-pipeline", daemon=True).start()
    while True:
        try:
            item = batches.get(timeout=poll_s)
        except queue.Empty:
            guard.check()
            continue
        if item is _DONE:
            return
        if isinstance(item, _Failed):
            raise item.exc
        guard.progress()
        yield item


SOURCE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class InvalidSourceName(ValueError):
    """A source name that is not 1-64 letters, digits, '.', '_' or '-' (starting with a letter or digit)."""


def source_name_for(folder: Path, name: str | None) -> str:
    """The named source a folder is indexed as: `name`, else the folder's own name."""
    chosen = name if name is not None else Path(folder).resolve().name
    if not SOURCE_NAME.match(chosen or ""):
        raise InvalidSourceName(
            f"source name {chosen!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit (--source-name)"
        )
    return chosen


def recorded_chunking(info: VersionInfo) -> dict[str, Any]:
    """A version's chunking record as today's settings write it. Releases before parse signatures
    kept the PII settings here (they now live per file); versions from before contextual text
    embedded the plain chunk text."""
    return {"contextual": False, **{k: v for k, v in info.chunking.items() if k != "pii"}}


class IngestRun:
    def __init__(
        self,
        settings: RAGSettings,
        source: Path,
        full: bool = False,
        source_name: str | None = None,
        keep_absent: bool = False,
        delete: Iterable[str] = (),
        purge_deleted: bool = False,
    ):
        """`keep_absent`: the folder holds only what to add or replace (the document API's uploads,
        whose originals are not kept): this source's documents absent from it stay, and only the
        paths in `delete` leave the index. Otherwise the folder is mirrored: what is absent is
        deleted. `purge_deleted`: kept versions holding a deleted document are dropped too, so no
        rollback brings it back."""
        self.settings = settings
        self.source = Path(source)
        self.source_name = source_name_for(self.source, source_name)
        self.full = full
        self.keep_absent = keep_absent
        self.delete = set(delete)
        self.purge_deleted = purge_deleted
        self.purged_versions: list[str] = []
        self.adopting = False  # this run takes over the documents indexed before sources were named
        self.pii_found: dict[str, dict[str, int]] = {}  # file -> PII type -> count redacted
        self.incomplete: dict[str, list[str]] = {}  # file -> parts that yielded no text
        self.reparsed: dict[str, str] = {}  # unchanged file read again -> why
        # Of those, the ones whose old text may stay if reading them again fails: the PII settings
        # that decided it are unchanged (text redacted under other settings is never kept).
        self.reparsed_keepable: set[str] = set()
        self.parse_nodes: dict[str, str] = {}  # file -> node that parsed it
        self.embed_nodes: Counter = Counter()  # node -> chunks embedded there
        self.resources: dict[str, Any] = {}  # what the run asked Ray for (summary.resources)
        self.index = VersionedIndex.from_settings(settings)
        self.actor = default_actor(settings.triggered_by)

    def run(self) -> IngestSummary:
        started = time.monotonic()
        started_at = utc_now()
        ingest = self.settings.ingest
        scanner = SourceScanner(ingest.extensions, int(ingest.max_file_mb * 2**20), ingest.access, ingest.default_tenant)
        scan = scanner.scan(self.source)  # raises SourceNotFound before anything is locked or written
        with self.index.lock(self.settings.ingest.lock_timeout_s, holder=f"ingest by {self.actor}"):
            try:
                summary, file_actions = self._run_locked(scan, started_at)
            except BaseException as exc:
                self._audit(started_at, "failed", None, [], error=f"{type(exc).__name__}: {exc}")
                raise
            summary.duration_s = round(time.monotonic() - started, 3)
            self._audit(started_at, "completed", summary, file_actions)
        return summary

    def _run_locked(self, scan: ScanResult, started_at: str) -> tuple[IngestSummary, list[dict[str, str]]]:
        current = self.index.current_info()
        previous_manifest = self.index.manifest(current.version if current else None)
        spec = self._model_spec()
        rebuild_reason = self._full_rebuild_reason(current, spec)
        # This source's documents, by path; an index from before sources were named is adopted
        # (its entries become this source's) when this source is the folder it was built from.
        self.adopting = self._adopts_legacy(previous_manifest)
        own = previous_manifest.of_source(self.source_name)
        if self.adopting:
            own = {**previous_manifest.of_source(LEGACY_SOURCE), **own}
        own_manifest = Manifest(own)
        base_manifest = Manifest() if rebuild_reason else own_manifest

        fingerprints = {f.path: f.fingerprint for f in scan.files if f.path not in self.delete}
        diff = diff_manifest(base_manifest, fingerprints)
        # Kept though absent (keep_absent): carried as they are, or embedded again from their
        # stored text on a model change, like other sources' documents; never read again.
        absent_kept = sorted(p for p in own if p not in fingerprints and p not in self.delete) if self.keep_absent else []
        if self.keep_absent:
            deleted = sorted(p for p in own if p in self.delete)
            diff = ManifestDiff(diff.added, diff.changed, diff.unchanged, deleted)
        diff, reparse_reasons = self._reparse_stale(diff, base_manifest)
        if not scan.files and own_manifest.files and not self.keep_absent:
            # An empty source usually means an unmounted or mistyped folder: refuse to wipe the index.
            log.warning("source %s has no documents; the index is left unchanged", self.source)
            diff = ManifestDiff([], [], [], [])
        summary = IngestSummary(
            index_version=current.version if current else None,
            previous_version=current.version if current else None,
            files_seen=scan.files_seen,
            files_unchanged=len(diff.unchanged),
            files_ignored=len(scan.ignored),
            files_reparsed=sum(reparse_reasons.values()),
            reparse_reasons=reparse_reasons,
            embedding_model=spec.name,
            full_rebuild_reason=rebuild_reason,
            chunks_total=current.chunks_total if current else 0,
            source=self.source_name,
            sources=previous_manifest.sources(),
        )
        failures = list(scan.failed)
        log.info(
            "scan done",
            extra={
                "fields": {
                    "source": str(self.source),
                    "files": len(scan.files),
                    "to_embed": len(diff.to_embed),
                    "deleted": len(diff.deleted),
                    "unchanged": len(diff.unchanged),
                    "rebuild": rebuild_reason,
                }
            },
        )

        adopted = [p for p in diff.unchanged if own[p].source == LEGACY_SOURCE] if self.adopting else []
        needs_version = bool(diff.to_embed or diff.deleted or rebuild_reason or adopted)
        if not needs_version:
            summary.files_failed = [asdict(f) for f in failures]
            return summary, self._file_actions(diff, [], failures, scan.ignored)

        builder = self.index.begin(spec, chunking_record(self.settings), parent=current.version if current else None)
        try:
            new_entries, pipeline_failures = self._embed_and_write(builder, scan, diff.to_embed, spec, started_at)
            # An unchanged file that fails when read again (a worker lost, an OCR timeout) keeps
            # the text it was indexed with, reported as incomplete, rather than leaving the index.
            kept = {f.file: f.reason for f in pipeline_failures if f.file in self.reparsed_keepable}
            for path, reason in kept.items():
                self.incomplete[path] = [f"read again ({self.reparsed[path]}) and failed: {reason}; the previous text is kept"]
            failures.extend(f for f in pipeline_failures if f.file not in kept)
            # Files whose old chunks leave the index: deleted, or changed (even if they now fail).
            dropped = [p for p in diff.deleted + diff.changed if p in own and p not in kept]
            if not (new_entries or dropped or rebuild_reason or adopted):
                # Only previously failing files were retried, and they still fail: keep serving
                # the current version rather than publishing an identical one.
                builder.abort()
                summary.files_failed = [asdict(f) for f in failures]
                summary.files_incomplete = [{"file": path, "reason": "; ".join(self.incomplete[path])} for path in sorted(kept)]
                return summary, self._file_actions(diff, [], failures, scan.ignored)
            keep = {doc_key(own[p].source, p) for p in diff.unchanged + sorted(kept)} if not rebuild_reason else set()
            mine = {self.source_name, LEGACY_SOURCE} if self.adopting else {self.source_name}
            others = {key for key, entry in previous_manifest.files.items() if entry.source not in mine}
            others |= {doc_key(own[p].source, p) for p in absent_kept}
            # Other sources' files are not at hand: when the vectors change (another model, or
            # contextual text turned on or off) their stored chunk text is embedded again, so that
            # each chunk's vector is of the text its version's BM25 reads.
            reembed = self._load_model() if self._vectors_change(current, spec) else None
            carried = self._carry_over(builder, current, keep | others, reembed)
            manifest = Manifest({**carried, **{doc_key(e.source, e.path): e for e in new_entries.values()}})
            info = builder.commit(manifest)
            self.index.set_current(builder.version)
        except BaseException:
            builder.abort()
            raise
        if self.purge_deleted and diff.deleted:
            self.purged_versions = self.index.purge_versions_holding({doc_key(own[p].source, p) for p in diff.deleted})
            log.info("purged kept versions holding deleted documents", extra={"fields": {"versions": self.purged_versions}})
        removed = self.index.garbage_collect(self.settings.ingest.keep_versions)
        if removed:
            log.info("garbage collected versions", extra={"fields": {"removed": removed}})

        replaced = list(own) if rebuild_reason else dropped
        summary.index_version = info.version
        summary.new_version_created = True
        summary.files_indexed = len(new_entries)
        totals: Counter = Counter()
        for path in new_entries:
            totals.update(self.pii_found.get(path, {}))
        summary.pii_redacted = dict(sorted(totals.items()))
        summary.parse_nodes = dict(sorted(Counter(self.parse_nodes.values()).items()))
        summary.embed_nodes = dict(sorted(self.embed_nodes.items()))
        summary.resources = self.resources
        summary.files_deleted = len(diff.deleted)
        summary.files_failed = [asdict(f) for f in failures]
        summary.files_incomplete = [
            {"file": path, "reason": "; ".join(parts)}
            for path, parts in sorted(self.incomplete.items())
            if path in new_entries or path in kept
        ]
        summary.chunks_added = sum(len(e.chunk_ids) for e in new_entries.values())
        summary.chunks_deleted = sum(len(own[p].chunk_ids) for p in replaced)
        summary.chunks_total = info.chunks_total
        summary.sources = manifest.sources()
        summary.files_adopted = len(adopted)
        summary.versions_purged = self.purged_versions
        return summary, self._file_actions(diff, list(new_entries), failures, scan.ignored)

    def _reparse_stale(self, diff: ManifestDiff, manifest: Manifest) -> tuple[ManifestDiff, dict[str, int]]:
        """Unchanged files whose parse signature differs from what this run would record are read
        again (counted per reason): a parser upgrade, a new OCR engine, other PII settings."""
        if not diff.unchanged:
            return diff, {}
        pii = self.settings.ingest.pii
        redaction = redactor_signature(pii.mode, pii.entities, pii.score_threshold, pii.spacy_model)
        ocr_now: str | None = None
        stale: dict[str, str] = {}
        for path in diff.unchanged:
            old = manifest.files[path].parse_signature
            used_ocr = "; ocr " in old
            if used_ocr and ocr_now is None:
                ocr_now = ocr_engine_label(self.settings.ingest.ocr if self.settings.ingest.ocr.enabled else None)
            try:
                expected = parse_signature(path, redaction, ocr_now if used_ocr else "", self.settings.ingest.pdf_tables)
            except DocumentParseError as exc:  # a type this release does not read: parsed again, it fails with this reason
                stale[path] = exc.reason
                continue
            if old != expected:
                stale[path] = signature_change(old, expected)
                if signature_parts(old).get("pii") == signature_parts(expected).get("pii"):
                    self.reparsed_keepable.add(path)
        if not stale:
            return diff, {}
        self.reparsed = stale
        diff = ManifestDiff(diff.added, sorted(diff.changed + list(stale)), [p for p in diff.unchanged if p not in stale], diff.deleted)
        return diff, dict(sorted(Counter(stale.values()).items()))

    def _model_spec(self) -> EmbeddingModelSpec:
        """The spec of the configured model, without loading it here: the actors embed."""
        s = self.settings
        return resolve_spec(s.embedding_model, s.embedding_query_instruction, s.hub_probe_timeout_s, backend=s.embedding_backend)

    def _load_model(self) -> EmbeddingModel:
        """The model itself, in the driver: only to embed carried-over chunks again after a model change."""
        s = self.settings
        return EmbeddingModel.from_setting(
            s.embedding_model, "cpu", s.embedding_query_instruction, s.hub_probe_timeout_s, torch_threads=1, backend=s.embedding_backend
        )

    def _vectors_change(self, current: VersionInfo | None, spec: EmbeddingModelSpec) -> bool:
        if current is None:
            return False
        contextual_changed = recorded_chunking(current)["contextual"] != self.settings.chunking.contextual
        return contextual_changed or not same_vector_space(current.model_spec, spec)

    def _full_rebuild_reason(self, current: VersionInfo | None, spec: EmbeddingModelSpec) -> str | None:
        if current is None:
            return None
        if self.full:
            return "--full requested"
        if not same_vector_space(current.model_spec, spec):
            return f"embedding model changed from {current.model_spec.label()} to {spec.label()}"
        if recorded_chunking(current) != chunking_record(self.settings):
            return "chunking settings changed"
        return None

    def _carry_over(
        self, builder: VersionBuilder, current: VersionInfo | None, keys: set[str], reembed: EmbeddingModel | None
    ) -> dict[str, ManifestEntry]:
        """Copy these documents' chunks (by manifest key) from the current version's Parquet, with
        their vectors, or embedded again by `reembed` when the run rebuilds the vectors (a model
        change: other sources' files are not at hand, their stored chunk text is). Documents
        indexed before sources were named, when this run adopts them, are relabelled as its own."""
        if current is None or not keys:
            return {}
        table, _ = read_parquet_version(self.index.parquet_dir(current.version))
        sources = pc.fill_null(table.column("source"), "")
        row_keys = pc.if_else(pc.equal(sources, ""), table.column("file"), pc.binary_join_element_wise(sources, table.column("file"), "//"))
        keep = table.filter(pc.is_in(row_keys, value_set=pa.array(sorted(keys), type=pa.string())))
        if self.adopting:
            relabelled = pc.if_else(pc.equal(pc.fill_null(keep.column("source"), ""), ""), self.source_name, keep.column("source"))
            keep = keep.set_column(keep.schema.get_field_index("source"), "source", relabelled)
        batch = self.settings.ingest.write_batch_size
        for offset in range(0, keep.num_rows, batch):
            part = keep.slice(offset, batch)
            if reembed is not None:
                vectors = reembed.embed_documents(indexed_texts(part, self.settings.chunking.contextual))
                field = part.schema.field("embedding")
                column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel(), type=pa.float32()), vectors.shape[1])
                part = part.set_column(part.schema.get_field_index("embedding"), field.with_type(column.type), column)
            builder.add(part)
        return manifest_from_rows(keep).files

    def _adopts_legacy(self, manifest: Manifest) -> bool:
        """Whether this run takes over the documents indexed before sources were named: when the
        last ingest that completed before sources had names read this same folder (the audit trail
        says which), or when the trail does not say."""
        if not manifest.of_source(LEGACY_SOURCE):
            return False
        unnamed = [
            r
            for r in self.index.audit.records()
            if r.get("event") == "ingest" and r.get("status") == "completed" and "source_name" not in r
        ]
        folder = unnamed[-1].get("source") if unnamed else None
        return folder is None or Path(folder) == self.source.resolve()

    def _embed_and_write(
        self, builder: VersionBuilder, scan: ScanResult, to_embed: list[str], spec: EmbeddingModelSpec, started_at: str
    ) -> tuple[dict[str, ManifestEntry], list[SkippedFile]]:
        if not to_embed:
            return {}, []
        connect_ray(self.settings)
        by_path = {f.path: f for f in scan.files}
        rows, failures = [], []
        for path in to_embed:
            source_file = by_path[path]
            try:
                data = source_file.absolute.read_bytes()
            except OSError as exc:
                failures.append(SkippedFile(path, f"cannot read: {exc.strerror or exc}"))
                continue
            rows.append(file_row(path, data, source_file.sidecar_sha256, source_file.metadata, self.source_name))
        if not rows:
            return {}, failures
        s = self.settings
        parse_config = ParseConfig(
            passwords=tuple(p.get_secret_value() for p in s.ingest.passwords),
            chunk_size=s.chunking.chunk_size,
            chunk_overlap=s.chunking.chunk_overlap,
            separators=tuple(s.chunking.separators),
            contextual=s.chunking.contextual,
            ingested_at=started_at,
            index_version=builder.version,
            pii_mode=s.ingest.pii.mode,
            pii_entities=tuple(s.ingest.pii.entities),
            pii_score_threshold=s.ingest.pii.score_threshold,
            pii_spacy_model=s.ingest.pii.spacy_model,
            ocr=s.ingest.ocr if s.ingest.ocr.enabled else None,
            pdf_tables=s.ingest.pdf_tables,
        )
        resources, plan = self._resources()
        max_files = files_per_block(s.ingest.block_max_files, len(rows), plan.parse_concurrency)
        groups = group_files([len(row["data"]) for row in rows], max_files, int(s.ingest.block_max_mb * 2**20))
        self.resources["blocks"] = len(groups)
        log.info("pipeline resources", extra={"fields": self.resources})
        progress = _Progress(len(rows), s.ingest.progress_interval_s)
        out = _Collected()
        self._run_pipeline(builder, rows, groups, parse_config, spec, resources, plan, progress, out)
        written, failed_paths, files_done = out.written, out.failed_paths, out.files_done
        # Files of a lost block (its worker crashed, was killed or ran out of memory): those that
        # shared it with others are parsed again one per block, so one bad file cannot take its
        # neighbours with it. What is lost again is reported below, never dropped.
        accounted = files_done | set(failed_paths)
        lost = [group for group in groups if len(group) > 1 and any(rows[i]["file"] not in accounted for i in group)]
        retry = [i for group in lost for i in group if rows[i]["file"] not in accounted]
        if retry:
            log.warning(
                "blocks lost in the pipeline; their files are parsed again one per block",
                extra={"fields": {"blocks": len(lost), "files": len(retry)}},
            )
            self.resources["files_parsed_again"] = len(retry)
            retry_rows = [rows[i] for i in retry]
            single = [[i] for i in range(len(retry_rows))]
            self._run_pipeline(builder, retry_rows, single, parse_config, spec, resources, plan, progress, out)
        progress.finish(len(files_done) + len(failed_paths))

        entries = {e.path: e for e in manifest_from_rows(pa.concat_tables(written)).files.values()} if written else {}
        failures.extend(SkippedFile(path, reason) for path, reason in sorted(failed_paths.items()))
        accounted = set(entries) | set(failed_paths)
        for row in rows:  # a file that produced neither chunks nor a failure row is still reported
            if row["file"] not in accounted:
                failures.append(SkippedFile(row["file"], LOST_REASON))
        return entries, failures

    def _resources(self) -> tuple[PipelineResources, CpuPlan]:
        """Ray requests sized to the cluster as it is when the run starts (README, Ingest beside
        serving); raises NoCpuToSpare when nothing is free."""
        s = self.settings
        ingest = s.ingest
        embed_gpus = embed_gpus_per_actor(ingest.embed_num_gpus)
        auto = "auto" in (ingest.parse_num_cpus, ingest.embed_num_cpus)
        # With automatic requests, a run needs at least MIN_CPU_SHARE per actor and one parse task.
        capacity = ClusterCapacity.read(wait_for_cpus=(ingest.embed_actors_min + 1) * MIN_CPU_SHARE if auto else 0.0)
        self.resources = {
            "cpus_total": capacity.cpus_total,
            "cpus_free": round(capacity.cpus_free, 3),
            "cores": capacity.cores,
            "nodes": capacity.nodes,
        }
        try:
            plan = plan_cpus(
                capacity.cpus_free,
                capacity.cores,
                ingest.embed_actors_min,
                ingest.parse_num_cpus,
                ingest.embed_num_cpus,
                ingest.parse_concurrency,
                capacity.largest_free_on_a_node,
            )
        except Exception:
            log.error("no CPU to spare for the ingest", extra={"fields": self.resources})
            raise
        needed = plan.parse_num_cpus + plan.embed_num_cpus * ingest.embed_actors_min
        if needed > capacity.cpus_free + 1e-6:
            log.warning(
                "the configured CPU requests do not fit what is free now; the run waits for them up to ingest.stall_timeout_s",
                extra={"fields": {**self.resources, "parse_num_cpus": plan.parse_num_cpus, "embed_num_cpus": plan.embed_num_cpus}},
            )
        self.resources.update(
            parse_num_cpus=plan.parse_num_cpus,
            embed_num_cpus=plan.embed_num_cpus,
            parse_concurrency=plan.parse_concurrency,
            embed_actors=[ingest.embed_actors_min, ingest.embed_actors_max],
            embed_num_gpus=embed_gpus,
            embed_torch_threads=ingest.embed_torch_threads or "node cores",
        )
        resources = PipelineResources(
            embed_batch_size=ingest.embed_batch_size,
            embed_actors_min=ingest.embed_actors_min,
            embed_actors_max=ingest.embed_actors_max,
            embed_num_cpus=plan.embed_num_cpus,
            embed_num_gpus=embed_gpus,
            embed_torch_threads=ingest.embed_torch_threads,
            embedding_device=s.embedding_device,
            parse_num_cpus=plan.parse_num_cpus,
            parse_concurrency=plan.parse_concurrency,
        )
        return resources, plan

    def _run_pipeline(
        self,
        builder: VersionBuilder,
        rows: list[dict[str, Any]],
        groups: list[list[int]],
        parse_config: ParseConfig,
        spec: EmbeddingModelSpec,
        resources: PipelineResources,
        plan: CpuPlan,
        progress: _Progress,
        out: _Collected,
    ) -> None:
        """One pass of the Ray Data pipeline over `rows`; the driver writes every batch."""
        ingest = self.settings.ingest
        written, failed_paths, files_done = out.written, out.failed_paths, out.files_done
        guard = StallGuard(plan, resources.embed_num_gpus, ingest.stall_timeout_s, ingest.progress_interval_s)
        build = partial(build_dataset, rows, parse_config, spec, resources, groups)
        for batch in iter_with_guard(build, ingest.write_batch_size, guard):
            errors = batch.column("error")
            self.parse_nodes.update(zip(batch.column("file").to_pylist(), batch.column("parse_node").to_pylist()))
            for record in batch.filter(pc.not_equal(errors, "")).select(["file", "error"]).to_pylist():
                failed_paths[record["file"]] = record["error"]
            good = batch.filter(pc.equal(errors, ""))
            for record in good.select(["file", "pii", "incomplete"]).to_pylist():
                if record["file"] not in self.pii_found:  # every chunk row carries its file's counts
                    self.pii_found[record["file"]] = json.loads(record["pii"])
                    if json.loads(record["incomplete"]):
                        self.incomplete[record["file"]] = json.loads(record["incomplete"])
            self.embed_nodes.update(good.column("embed_node").to_pylist())
            good = good.drop_columns(PIPELINE_COLUMNS)
            if good.num_rows:
                builder.add(good)
                written.append(good.select(MANIFEST_COLUMNS))
                files_done.update(good.column("file").to_pylist())
            progress.update(good.num_rows, len(files_done) + len(failed_paths))

    def _file_actions(
        self, diff: ManifestDiff, indexed: Iterable[str], failures: list[SkippedFile], ignored: list[SkippedFile]
    ) -> list[dict[str, str]]:
        indexed = set(indexed)
        actions: list[dict[str, Any]] = [{"file": p, "action": "added"} for p in diff.added if p in indexed]
        actions += [
            {"file": p, "action": "reparsed", "reason": self.reparsed[p]} if p in self.reparsed else {"file": p, "action": "changed"}
            for p in diff.changed
            if p in indexed
        ]
        for action in actions:
            if self.pii_found.get(action["file"]):
                action["pii_redacted"] = self.pii_found[action["file"]]
            if self.incomplete.get(action["file"]):
                action["incomplete"] = "; ".join(self.incomplete[action["file"]])
        actions += [{"file": p, "action": "deleted"} for p in diff.deleted]
        actions += [{"file": f.file, "action": "failed", "reason": f.reason} for f in failures]
        actions += [{"file": f.file, "action": "ignored", "reason": f.reason} for f in ignored]
        return actions

    def _audit(
        self, started_at: str, status: str, summary: IngestSummary | None, files: list[dict[str, str]], error: str | None = None
    ) -> None:
        record: dict[str, Any] = {
            "event": "ingest",
            "status": status,
            "triggered_by": self.actor,
            "started_at": started_at,
            "finished_at": utc_now(),
            "source": str(self.source.resolve()),
            "source_name": self.source_name,
            "full": self.full,
        }
        if summary is not None:
            record.update(
                index_version=summary.index_version,
                previous_version=summary.previous_version,
                new_version_created=summary.new_version_created,
                embedding_model=summary.embedding_model,
                summary={k: v for k, v in summary.to_dict().items() if k != "files_failed"},
            )
        if error:
            record["error"] = error
        record["files"] = files
        self.index.record(record)


@dataclass
class _Collected:
    """What the pipeline's passes gave the driver."""

    written: list[pa.Table] = field(default_factory=list)  # the id columns of every chunk written, for the manifest
    failed_paths: dict[str, str] = field(default_factory=dict)  # file -> reason
    files_done: set[str] = field(default_factory=set)


LOST_REASON = "no output from the pipeline: the worker parsing it was lost (crashed, killed or out of memory)"


class _Progress:
    """A log line every few seconds so long runs show where they are."""

    def __init__(self, total_files: int, interval_s: float):
        self.total_files = total_files
        self.interval_s = interval_s
        self.started = time.monotonic()
        self.last = self.started
        self.chunks = 0

    def update(self, chunks: int, files_done: int) -> None:
        self.chunks += chunks
        now = time.monotonic()
        if now - self.last >= self.interval_s:
            self.last = now
            self._log(files_done)

    def finish(self, files_done: int) -> None:
        self._log(files_done)

    def _log(self, files_done: int) -> None:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        log.info(
            "progress",
            extra={
                "fields": {
                    "files_done": files_done,
                    "files_total": self.total_files,
                    "chunks_written": self.chunks,
                    "chunks_per_s": round(self.chunks / elapsed, 1),
                    "elapsed_s": round(elapsed, 1),
                }
            },
        )


def rebuild_from_parquet(settings: RAGSettings, parquet_dir: Path, triggered_by: str | None = None) -> IngestSummary:
    """A new version in the configured store from a Parquet copy, without re-embedding."""
    started = time.monotonic()
    started_at = utc_now()
    index = VersionedIndex.from_settings(settings)
    actor = default_actor(triggered_by or settings.triggered_by)
    table, recorded = read_parquet_version(parquet_dir)
    spec = EmbeddingModelSpec.from_dict(recorded["embedding_model"])
    with index.lock(settings.ingest.lock_timeout_s, holder=f"rebuild by {actor}"):
        current = index.current_version()
        builder = index.begin(spec, recorded["chunking"], parent=current)
        try:
            for offset in range(0, table.num_rows, settings.ingest.write_batch_size):
                builder.add(table.slice(offset, settings.ingest.write_batch_size))
            info = builder.commit(manifest_from_rows(table))
            index.set_current(info.version)
        except BaseException:
            builder.abort()
            raise
        index.garbage_collect(settings.ingest.keep_versions)
        summary = IngestSummary(
            index_version=info.version,
            previous_version=current,
            files_seen=info.files_total,
            files_indexed=info.files_total,
            chunks_added=info.chunks_total,
            chunks_total=info.chunks_total,
            embedding_model=spec.name,
            new_version_created=True,
            full_rebuild_reason=f"rebuilt from Parquet {parquet_dir}",
            duration_s=round(time.monotonic() - started, 3),
        )
        index.record(
            {
                "event": "rebuild_from_parquet",
                "status": "completed",
                "triggered_by": actor,
                "started_at": started_at,
                "finished_at": utc_now(),
                "source": str(Path(parquet_dir).resolve()),
                "index_version": info.version,
                "previous_version": current,
                "embedding_model": spec.name,
                "summary": summary.to_dict(),
                "files": [],
            }
        )
    return summary
