"""Metadata filters: validation and canonical form, and parity of the Python evaluator `matches()`
(used by the lexical retriever) with ChromaDB's own `where` on a real embedded collection."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from rag_core.embedding import EmbeddingModelSpec
from rag_core.index_store import VersionedIndex, chroma_metadata, chunk_schema, manifest_from_rows
from serve_app.filters import MAX_CONDITIONS, MAX_DEPTH, MAX_IN_VALUES, FilterError, matches, normalize_filter

DIM = 8
SPEC = EmbeddingModelSpec("test/synthetic-8d", "hub", DIM, "")


# -- normalize_filter: accepted forms ---------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"file": "a.pdf"}, {"file": {"$eq": "a.pdf"}}),
        ({"page": 3}, {"page": {"$eq": 3}}),
        ({"reviewed": True}, {"reviewed": {"$eq": True}}),
        ({"score": 0.5}, {"score": {"$eq": 0.5}}),
        ({"file": {"$eq": "a.pdf"}}, {"file": {"$eq": "a.pdf"}}),
        ({"page": {"$ne": 1}}, {"page": {"$ne": 1}}),
        ({"file": {"$in": ["a.pdf", "b.md"]}}, {"file": {"$in": ["a.pdf", "b.md"]}}),
        ({"file": {"$nin": ["a.pdf"]}}, {"file": {"$nin": ["a.pdf"]}}),
        (
            {"$and": [{"file": "a.pdf"}, {"page": {"$ne": 2}}]},
            {"$and": [{"file": {"$eq": "a.pdf"}}, {"page": {"$ne": 2}}]},
        ),
        (
            {"$or": [{"file": "a.pdf"}, {"team": {"$in": ["hr", "it"]}}]},
            {"$or": [{"file": {"$eq": "a.pdf"}}, {"team": {"$in": ["hr", "it"]}}]},
        ),
        # Several top-level keys mean $and, in the order given.
        ({"file": "a.pdf", "page": 2}, {"$and": [{"file": {"$eq": "a.pdf"}}, {"page": {"$eq": 2}}]}),
        # A one-element $and / $or is unwrapped (Chroma rejects one-element lists).
        ({"$and": [{"file": "a.pdf"}]}, {"file": {"$eq": "a.pdf"}}),
        ({"$or": [{"page": {"$ne": 1}}]}, {"page": {"$ne": 1}}),
        (
            {"$or": [{"$and": [{"team": "hr"}, {"year": 2024}]}, {"file": "c.txt"}]},
            {"$or": [{"$and": [{"team": {"$eq": "hr"}}, {"year": {"$eq": 2024}}]}, {"file": {"$eq": "c.txt"}}]},
        ),
    ],
)
def test_normalize_filter_accepts_and_canonicalises(raw: dict, expected: dict) -> None:
    assert normalize_filter(raw) == expected


@pytest.mark.parametrize("raw", [None, {}])
def test_no_filter_means_none(raw: dict | None) -> None:
    assert normalize_filter(raw) is None


# -- normalize_filter: refusals ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"file": {"$regex": "a.*"}}, "unknown operator '\\$regex'"),
        ({"page": {"$gt": 1}}, "unknown operator '\\$gt'"),
        ({"$not": {"file": "a"}}, "unknown operator '\\$not'"),
        ({"file": {"$in": "a.pdf"}}, "\\$in takes a non-empty list"),
        ({"file": {"$in": []}}, "\\$in takes a non-empty list"),
        ({"file": {"$nin": []}}, "\\$nin takes a non-empty list"),
        ({"file": {"$in": [["a"]]}}, "\\$in takes a non-empty list"),
        ({"file": {"$in": [{"x": 1}]}}, "\\$in takes a non-empty list"),
        ({"file": {"name": "a.pdf"}}, "unknown operator 'name'"),  # a nested object as a value
        ({"file": {"$eq": {"name": "a.pdf"}}}, "\\$eq takes a string, number or boolean"),
        ({"file": {"$ne": ["a.pdf"]}}, "\\$ne takes a string, number or boolean"),
        ({"file": {"$eq": "a", "$ne": "b"}}, "one operator object"),
        ({"file": ["a.pdf", "b.md"]}, "one operator object"),
        ({"file": None}, "one operator object"),
        ({"page": float("nan")}, "one operator object"),
        ({"$and": {"file": "a"}}, "\\$and takes a non-empty list"),
        ({"$or": []}, "\\$or takes a non-empty list"),
        ({"$and": [{}]}, "non-empty JSON object"),
        ({"$or": ["a.pdf"]}, "non-empty JSON object"),
    ],
)
def test_normalize_filter_rejects(raw: dict, message: str) -> None:
    with pytest.raises(FilterError, match=message):
        normalize_filter(raw)


@pytest.mark.parametrize("raw", ["file", ["file", "a.pdf"], [{"file": "a.pdf"}], 7])
def test_a_filter_that_is_not_an_object_is_rejected(raw: object) -> None:
    with pytest.raises(FilterError, match="JSON object"):
        normalize_filter(raw)  # type: ignore[arg-type]


def nested(levels: int) -> dict:
    """A filter whose field conditions sit `levels` levels deep (two-element lists are never unwrapped)."""
    node: dict = {"a": 1}
    for level in range(levels - 1):
        node = {("$and", "$or")[level % 2]: [node, {f"k{level}": level}]}
    return node


def test_depth_limit() -> None:
    deepest = json.dumps(normalize_filter(nested(MAX_DEPTH)))
    assert deepest.count('"$and"') + deepest.count('"$or"') == MAX_DEPTH - 1  # accepted, nothing unwrapped
    with pytest.raises(FilterError, match=f"deeper than {MAX_DEPTH}"):
        normalize_filter(nested(MAX_DEPTH + 1))


def test_condition_count_limit_counts_across_the_whole_filter() -> None:
    at_limit = {"$or": [{"page": i} for i in range(MAX_CONDITIONS)]}
    assert len(normalize_filter(at_limit)["$or"]) == MAX_CONDITIONS
    with pytest.raises(FilterError, match=f"more than {MAX_CONDITIONS} conditions"):
        normalize_filter({"$or": [{"page": i} for i in range(MAX_CONDITIONS + 1)]})
    # Top-level keys count too, and so do conditions spread over nested lists.
    with pytest.raises(FilterError, match="conditions"):
        normalize_filter({f"key{i}": i for i in range(MAX_CONDITIONS + 1)})
    half = MAX_CONDITIONS // 2 + 1
    with pytest.raises(FilterError, match="conditions"):
        normalize_filter({"$and": [{"$or": [{"a": i} for i in range(half)]}, {"$or": [{"b": i} for i in range(half)]}]})


def test_in_list_length_limit() -> None:
    assert normalize_filter({"page": {"$in": list(range(MAX_IN_VALUES))}}) == {"page": {"$in": list(range(MAX_IN_VALUES))}}
    with pytest.raises(FilterError, match=f"at most {MAX_IN_VALUES}"):
        normalize_filter({"page": {"$nin": list(range(MAX_IN_VALUES + 1))}})


# -- matches() on plain metadata ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("where", "metadata", "expected"),
    [
        ({"team": {"$eq": "hr"}}, {"team": "hr"}, True),
        ({"team": {"$eq": "hr"}}, {"team": "it"}, False),
        ({"team": {"$eq": "hr"}}, {}, False),
        ({"team": {"$ne": "hr"}}, {}, True),  # a missing key is "not equal"
        ({"team": {"$in": ["hr", "it"]}}, {}, False),
        ({"team": {"$nin": ["hr"]}}, {}, True),
        ({"$or": [{"team": {"$eq": "hr"}}, {"page": {"$eq": 2}}]}, {"team": "it", "page": 2}, True),
        ({"$and": [{"team": {"$eq": "hr"}}, {"page": {"$eq": 2}}]}, {"team": "hr", "page": 3}, False),
        (None, {"team": "hr"}, True),
    ],
)
def test_matches_on_plain_metadata(where: dict | None, metadata: dict, expected: bool) -> None:
    assert matches(where, metadata) is expected


# -- parity with ChromaDB on a real embedded collection ----------------------------------------
# (file, page, sidecar metadata): keys department/year/reviewed/score are MISSING on some chunks.
CHUNKS = [
    ("handbook/vacation.md", 1, {"department": "hr", "year": 2024, "reviewed": True, "score": 0.5}),
    ("handbook/vacation.md", 2, {"department": "hr", "year": 2023}),
    ("handbook/remote.md", 1, {"department": "hr", "reviewed": False}),
    ("it/security.txt", 1, {"department": "it", "year": 2024, "score": 0.75}),
    ("it/security.txt", 2, {"department": "it", "reviewed": True}),
    ("finance/expenses.pdf", 3, {"department": "finance", "year": 2022, "score": 1.5}),
    ("office/kitchen.txt", 1, {}),
    ("office/parking.md", 1, {"year": 2024}),
    ("office/parking.md", 4, {"reviewed": False, "score": 0.5}),
    ("misc/notes.txt", 2, {"department": "", "year": 0}),
]

PARITY_FILTERS = [
    {"department": "hr"},
    {"department": {"$eq": ""}},
    {"department": {"$ne": "hr"}},
    {"department": {"$in": ["hr", "it"]}},
    {"department": {"$nin": ["hr", "it"]}},
    {"department": "legal"},
    {"department": {"$nin": ["legal"]}},
    {"year": 2024},
    {"year": {"$ne": 2024}},
    {"year": {"$in": [2022, 2023]}},
    {"year": {"$nin": [2023, 2024]}},
    {"year": 0},
    {"reviewed": True},
    {"reviewed": {"$ne": True}},
    {"reviewed": {"$in": [False]}},
    {"reviewed": {"$nin": [True]}},
    {"score": 0.5},
    {"score": {"$in": [0.75, 1.5]}},
    {"score": {"$ne": 0.5}},
    {"page": 1},
    {"page": 1.0},
    {"page": {"$nin": [1, 2]}},
    {"file": "office/parking.md"},
    {"file": {"$in": ["it/security.txt", "office/kitchen.txt"]}},
    {"nonexistent": {"$ne": "x"}},
    {"nonexistent": {"$nin": ["x", "y"]}},
    {"nonexistent": "x"},
    {"file": "handbook/vacation.md", "page": 2},
    {"department": {"$ne": "it"}, "year": {"$nin": [2024]}},
    {"$or": [{"department": "it"}, {"year": 2022}]},
    {"$or": [{"department": {"$ne": "hr"}}, {"reviewed": False}]},
    {"$and": [{"department": {"$nin": ["finance"]}}, {"page": {"$in": [1, 2]}}]},
    {"$and": [{"department": "hr"}]},
    {
        "$or": [
            {"$and": [{"department": "hr"}, {"year": {"$ne": 2024}}]},
            {"$and": [{"file": "office/parking.md"}, {"reviewed": {"$nin": [True]}}]},
        ]
    },
    nested(MAX_DEPTH),
]


def synthetic_vector(i: int) -> list[float]:
    vector = np.random.default_rng(i).normal(size=DIM).astype(np.float32)
    return (vector / np.linalg.norm(vector)).tolist()


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory):
    """The chunks above in a real committed index version, opened as the retriever opens it."""
    index = VersionedIndex(tmp_path_factory.mktemp("filters") / "index")
    builder = index.begin(SPEC, {"chunk_size": 64}, None)
    rows, counts = [], {}
    for i, (file, page, metadata) in enumerate(CHUNKS):
        n = counts[file] = counts.get(file, -1) + 1
        rows.append(
            {
                "chunk_id": f"{file}#{n}",
                "file": file,
                "page": page,
                "chunk_index": n,
                "char_start": 0,
                "char_end": 10,
                "text": f"chunk {i}",
                "file_sha256": f"sha-{file}",
                "sidecar_sha256": "",
                "file_size": 10,
                "ingested_at": "2024-06-01T12:00:00+00:00",
                "index_version": builder.version,
                "metadata": json.dumps(metadata),
                "embedding": synthetic_vector(i),
            }
        )
    table = pa.Table.from_pylist(rows, schema=chunk_schema(DIM))
    builder.add(table)
    index.set_current(builder.commit(manifest_from_rows(table)).version)
    client, opened = index.backend.open(index.current_version())
    yield opened, {row["chunk_id"]: chroma_metadata(row) for row in rows}
    index.backend.release(client)


def python_ids(where: dict | None, metadatas: dict[str, dict]) -> list[str]:
    return sorted(cid for cid, metadata in metadatas.items() if matches(where, metadata))


def chroma_ids(opened, where: dict | None) -> list[str]:
    return sorted(opened.get(where=where, include=[])["ids"])


def test_collection_stores_the_metadata_matches_sees(collection) -> None:
    opened, metadatas = collection
    got = opened.get(include=["metadatas"])
    assert dict(zip(got["ids"], got["metadatas"])) == metadatas
    assert sum("department" not in m for m in metadatas.values()) == 3  # keys really are missing


@pytest.mark.parametrize("raw", PARITY_FILTERS, ids=[json.dumps(f)[:70] for f in PARITY_FILTERS])
def test_matches_selects_exactly_what_chroma_selects(collection, raw: dict) -> None:
    opened, metadatas = collection
    where = normalize_filter(raw)
    expected = chroma_ids(opened, where)
    assert python_ids(where, metadatas) == expected
    # The dense path (collection.query) applies the same where as get().
    queried = opened.query(query_embeddings=[synthetic_vector(99)], n_results=len(CHUNKS), where=where, include=[])
    assert sorted(queried["ids"][0]) == expected


def test_parity_filters_are_not_trivial(collection) -> None:
    """The parity cases select varied, non-empty, non-total subsets (else they would test little)."""
    opened, metadatas = collection
    selections = [tuple(python_ids(normalize_filter(raw), metadatas)) for raw in PARITY_FILTERS]
    partial = [s for s in selections if 0 < len(s) < len(CHUNKS)]
    assert len(set(partial)) >= 20
    # Missing keys: $ne / $nin select chunks without the key, as Chroma does.
    assert "office/kitchen.txt#0" in python_ids(normalize_filter({"department": {"$ne": "hr"}}), metadatas)
    assert "office/kitchen.txt#0" in chroma_ids(opened, normalize_filter({"department": {"$nin": ["hr"]}}))


BOOL_INT_FILTERS = [
    {"reviewed": 1},
    {"reviewed": {"$ne": 1}},
    {"reviewed": {"$in": [0]}},
    {"page": True},
    {"page": {"$nin": [True]}},
]


@pytest.mark.parametrize("raw", BOOL_INT_FILTERS, ids=[json.dumps(f) for f in BOOL_INT_FILTERS])
def test_matches_keeps_booleans_and_numbers_apart_like_chroma(collection, raw: dict) -> None:
    opened, metadatas = collection
    where = normalize_filter(raw)
    assert python_ids(where, metadatas) == chroma_ids(opened, where)


MIXED_IN_FILTERS = [
    {"page": {"$in": [1, "2"]}},
    {"page": {"$nin": [1, 2.5]}},
    {"reviewed": {"$in": [True, 1]}},
]


@pytest.mark.parametrize("raw", MIXED_IN_FILTERS, ids=[json.dumps(f) for f in MIXED_IN_FILTERS])
def test_every_accepted_filter_is_one_chroma_accepts(collection, raw: dict) -> None:
    opened, _ = collection
    try:
        where = normalize_filter(raw)
    except FilterError:
        return  # refused up front: fine
    chroma_ids(opened, where)  # raises ValueError when Chroma refuses what normalize_filter let through


def test_chroma_really_refuses_mixed_type_lists(collection) -> None:
    """Why normalize_filter refuses mixed-type lists: Chroma itself refuses them at query time."""
    opened, _ = collection
    where = {"page": {"$in": [1, "2"]}}
    with pytest.raises(ValueError, match="same type"):
        chroma_ids(opened, where)
