"""Manifest diff (what an incremental run embeds) and the manifest's JSON form."""

from __future__ import annotations

from pathlib import Path

from rag_core.manifest import FileFingerprint, Manifest, ManifestDiff, ManifestEntry, diff_manifest, doc_key


def entry(sha: str, sidecar: str = "", chunks: int = 2, version: str = "v000001") -> ManifestEntry:
    return ManifestEntry(sha, sidecar, size=100, chunk_ids=tuple(f"{sha}-{i}" for i in range(chunks)), index_version=version)


PREVIOUS = Manifest(
    {
        "same.txt": entry("s1"),
        "edited.md": entry("e1"),
        "relabelled.pdf": entry("r1", sidecar="meta-old"),
        "gone/old.pdf": entry("g1"),
    }
)


def test_diff_sorts_files_into_added_changed_unchanged_deleted() -> None:
    current = {
        "same.txt": FileFingerprint("s1"),
        "edited.md": FileFingerprint("e2"),
        "relabelled.pdf": FileFingerprint("r1", "meta-old"),
        "new/file.txt": FileFingerprint("n1"),
    }
    diff = diff_manifest(PREVIOUS, current)

    assert diff == ManifestDiff(
        added=["new/file.txt"], changed=["edited.md"], unchanged=["relabelled.pdf", "same.txt"], deleted=["gone/old.pdf"]
    )
    assert diff.to_embed == ["edited.md", "new/file.txt"]


def test_sidecar_change_alone_counts_as_changed() -> None:
    diff = diff_manifest(PREVIOUS, {"relabelled.pdf": FileFingerprint("r1", "meta-new")})
    assert diff.changed == ["relabelled.pdf"]
    assert diff.unchanged == []


def test_sidecar_added_or_removed_counts_as_changed() -> None:
    diff = diff_manifest(PREVIOUS, {"same.txt": FileFingerprint("s1", "meta"), "relabelled.pdf": FileFingerprint("r1", "")})
    assert diff.changed == ["relabelled.pdf", "same.txt"]


def test_diff_against_empty_manifest_adds_everything() -> None:
    diff = diff_manifest(Manifest(), {"b.txt": FileFingerprint("2"), "a.txt": FileFingerprint("1")})
    assert diff == ManifestDiff(added=["a.txt", "b.txt"], changed=[], unchanged=[], deleted=[])


def test_empty_scan_deletes_everything() -> None:
    diff = diff_manifest(PREVIOUS, {})
    assert diff.deleted == sorted(PREVIOUS.files)
    assert diff.added == diff.changed == diff.unchanged == []


def test_paths_are_compared_exactly() -> None:
    diff = diff_manifest(Manifest({"Docs/A.txt": entry("x")}), {"docs/a.txt": FileFingerprint("x")})
    assert (diff.added, diff.deleted) == (["docs/a.txt"], ["Docs/A.txt"])


def test_fingerprint_matches_needs_both_hashes() -> None:
    assert FileFingerprint("a", "m").matches(FileFingerprint("a", "m"))
    assert not FileFingerprint("a", "m").matches(FileFingerprint("b", "m"))
    assert not FileFingerprint("a", "m").matches(FileFingerprint("a", "n"))
    assert entry("a", "m").fingerprint == FileFingerprint("a", "m")


def test_json_round_trip_keeps_every_field() -> None:
    manifest = Manifest({**PREVIOUS.files, "ünïcode/ファイル.md": entry("u1", chunks=0, version="v000042")})
    restored = Manifest.from_json(manifest.to_json())

    assert restored == manifest
    assert isinstance(restored.files["same.txt"].chunk_ids, tuple)
    assert restored.chunk_count == manifest.chunk_count == 8


def test_json_is_stable_and_sorted_by_path() -> None:
    forwards = Manifest({"b": entry("1"), "a": entry("2")})
    backwards = Manifest({"a": entry("2"), "b": entry("1")})
    assert forwards.to_json() == backwards.to_json()
    assert forwards.to_json().index('"a"') < forwards.to_json().index('"b"')


def test_load_of_missing_file_is_an_empty_manifest(tmp_path: Path) -> None:
    assert Manifest.load(tmp_path / "absent.json") == Manifest()


def test_load_reads_saved_json(tmp_path: Path) -> None:
    path = tmp_path / "manifest.json"
    path.write_text(PREVIOUS.to_json())
    assert Manifest.load(path) == PREVIOUS


def test_documents_of_several_sources_are_told_apart_by_key() -> None:
    docs = ManifestEntry("1", "", 10, ("c1",), "v000001", source="docs", path="a.txt")
    more = ManifestEntry("2", "", 10, ("c2",), "v000002", source="more", path="a.txt")
    manifest = Manifest({doc_key("docs", "a.txt"): docs, doc_key("more", "a.txt"): more})
    assert set(manifest.files) == {"docs//a.txt", "more//a.txt"}
    assert doc_key("docs", "a.txt") != doc_key("", "docs/a.txt")  # a named source never collides with an unnamed subfolder
    assert manifest.of_source("docs") == {"a.txt": docs} and manifest.of_source("more") == {"a.txt": more}
    assert manifest.sources() == {"docs": 1, "more": 1}
    # One source's diff sees its own documents only: the other source's a.txt is neither deleted nor changed.
    assert diff_manifest(manifest.of_source("docs"), {"a.txt": FileFingerprint("1")}) == ManifestDiff([], [], ["a.txt"], [])
    assert Manifest.from_json(manifest.to_json()) == manifest


def test_a_manifest_from_before_sources_reads_as_the_unnamed_source() -> None:
    legacy = '{"a.txt": {"sha256": "1", "sidecar_sha256": "", "size": 3, "chunk_ids": ["c"], "index_version": "v000001"}}'
    manifest = Manifest.from_json(legacy)
    assert doc_key("", "a.txt") == "a.txt"
    assert manifest.sources() == {"": 1} and set(manifest.of_source("")) == {"a.txt"}
    assert manifest.of_source("docs") == {}
