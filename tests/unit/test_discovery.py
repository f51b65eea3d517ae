"""SourceScanner over small folder trees built in tmp_path."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from ingest_jobs.discovery import ScanResult, SourceFile, SourceNotFound, SourceScanner, access_fingerprint
from rag_core.access import Access
from rag_core.manifest import FileFingerprint
from rag_core.settings import AccessRule

DEFAULT_ACCESS = Access.of("default")
EXTENSIONS = [".pdf", ".txt", ".md"]


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def scan(source: Path, max_file_bytes: int = 1 << 20) -> ScanResult:
    return SourceScanner(EXTENSIONS, max_file_bytes).scan(source)


def found(result: ScanResult) -> dict[str, SourceFile]:
    return {f.path: f for f in result.files}


def reasons(skipped) -> dict[str, str]:
    return {s.file: s.reason for s in skipped}


@pytest.fixture
def source(tmp_path: Path) -> Path:
    root = tmp_path / "source"
    root.mkdir()
    return root


def test_supported_files_are_found_with_posix_paths_and_hashes(source: Path) -> None:
    contents = {
        "a.txt": b"alpha",
        "notes/b.md": b"# beta",
        "notes/deep/er/c.PDF": b"%PDF-not-really",
        "with space/d e.txt": "unicode ü".encode(),
    }
    for relative, data in contents.items():
        write(source / relative, data)

    result = scan(source)

    files = found(result)
    assert set(files) == set(contents)
    for relative, data in contents.items():
        item = files[relative]
        assert item.sha256 == hashlib.sha256(data).hexdigest()
        assert item.size == len(data)
        assert item.absolute == (source / relative).resolve()
        assert item.metadata == DEFAULT_ACCESS.chunk_metadata()  # no sidecar: the default tenant, open
        assert item.sidecar_sha256 == access_fingerprint("", DEFAULT_ACCESS)
        assert item.fingerprint == FileFingerprint(item.sha256, item.sidecar_sha256)
    assert result.failed == [] and result.ignored == []
    assert result.files_seen == len(contents)


def test_scan_order_is_deterministic(source: Path) -> None:
    for name in ["z.txt", "a.txt", "m/b.txt", "b/a.txt"]:
        write(source / name, name)
    assert [f.path for f in scan(source).files] == [f.path for f in scan(source).files]


def test_unsupported_types_and_hidden_files_are_ignored(source: Path) -> None:
    write(source / "keep.txt", "ok")
    write(source / "image.png", b"\x89PNG")
    write(source / "Makefile", "all:")
    write(source / ".hidden.txt", "secret")
    write(source / ".git" / "HEAD.txt", "ref")
    write(source / "docs" / ".DS_Store", "x")

    result = scan(source)

    assert list(found(result)) == ["keep.txt"]
    ignored = reasons(result.ignored)
    assert ignored["image.png"] == "unsupported type .png"
    assert ignored["Makefile"] == "unsupported type (none)"
    assert ignored[".hidden.txt"] == "hidden file"
    assert ignored[".git"] == "hidden folder"
    assert ignored["docs/.DS_Store"] == "hidden file"
    assert "HEAD.txt" not in " ".join(ignored)  # a hidden folder is not walked
    assert result.failed == []


def test_symlink_leaving_the_source_is_ignored(source: Path, tmp_path: Path) -> None:
    outside = write(tmp_path / "outside" / "secret.txt", "outside text")
    (source / "link.txt").symlink_to(outside)

    result = scan(source)

    assert result.files == []
    assert "leaves the source" in reasons(result.ignored)["link.txt"]


def test_symlink_to_a_file_inside_the_source_is_accepted(source: Path) -> None:
    target = write(source / "real" / "doc.txt", "inside text")
    (source / "alias.txt").symlink_to(target)

    files = found(scan(source))

    assert set(files) == {"alias.txt", "real/doc.txt"}
    assert files["alias.txt"].sha256 == files["real/doc.txt"].sha256 == hashlib.sha256(b"inside text").hexdigest()


def test_linked_folder_is_not_walked(source: Path, tmp_path: Path) -> None:
    write(tmp_path / "elsewhere" / "x.txt", "x")
    (source / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)

    result = scan(source)

    assert result.files == []
    assert reasons(result.ignored) == {"linked": "linked folder"}


def test_file_over_the_size_limit_fails_as_too_large(source: Path) -> None:
    write(source / "big.txt", b"x" * 2049)
    write(source / "exact.txt", b"x" * 2048)

    result = scan(source, max_file_bytes=2048)

    assert list(found(result)) == ["exact.txt"]
    assert "too large" in reasons(result.failed)["big.txt"]
    assert result.files_seen == 2


def test_valid_sidecar_sets_metadata_and_its_hash(source: Path) -> None:
    write(source / "report.pdf", b"%PDF")
    sidecar_bytes = json.dumps({"department": "legal", "year": 2024, "draft": False, "score": 0.5, "tags": ["a", "b"]}).encode()
    write(source / "report.pdf.meta.json", sidecar_bytes)

    result = scan(source)

    report = found(result)["report.pdf"]
    assert report.metadata == {
        "department": "legal",
        "year": 2024,
        "draft": False,
        "score": 0.5,
        "tags": ["a", "b"],
        **DEFAULT_ACCESS.chunk_metadata(),
    }
    assert report.sidecar_sha256 == access_fingerprint(hashlib.sha256(sidecar_bytes).hexdigest(), DEFAULT_ACCESS)
    assert report.fingerprint == FileFingerprint(hashlib.sha256(b"%PDF").hexdigest(), report.sidecar_sha256)
    # The sidecar is read with its document, never listed as a file of its own.
    assert [f.path for f in result.files] == ["report.pdf"]
    assert result.ignored == [] and result.failed == []


def test_access_comes_from_the_sidecar_over_the_first_matching_rule_over_the_default(source: Path) -> None:
    for name in ["hr/pay.txt", "hr/boss/review.txt", "eng/design.md", "public.txt"]:
        write(source / name, name)
    write(source / "hr/boss/review.txt.meta.json", json.dumps({"groups": ["managers"], "year": 2024}))
    rules = [AccessRule(prefix="hr/", tenant="acme", groups=["hr"]), AccessRule(prefix="eng", tenant="acme")]
    files = found(SourceScanner(EXTENSIONS, 10**6, rules, "shared").scan(source))
    access = {
        path: (f.metadata["acl_tenant"], sorted(k for k, v in f.metadata.items() if k.startswith("acl_group__")), f.metadata["acl_open"])
        for path, f in files.items()
    }
    assert access == {
        "hr/pay.txt": ("acme", ["acl_group__hr"], False),
        "hr/boss/review.txt": ("acme", ["acl_group__managers"], False),  # sidecar groups replace the rule's
        "eng/design.md": ("acme", [], True),
        "public.txt": ("shared", [], True),
    }
    assert files["hr/boss/review.txt"].metadata["year"] == 2024 and "groups" not in files["hr/boss/review.txt"].metadata
    # A new rule changes the fingerprint, so the document is re-indexed with its new access.
    moved = found(SourceScanner(EXTENSIONS, 10**6, [AccessRule(prefix="hr", tenant="other")], "shared").scan(source))
    assert moved["hr/pay.txt"].fingerprint != files["hr/pay.txt"].fingerprint
    assert moved["public.txt"].fingerprint == files["public.txt"].fingerprint


@pytest.mark.parametrize("sidecar", [{"tenant": "bad tenant"}, {"groups": ["ok", "no/slash"]}, {"acl_open": True}, {"tenant": 5}])
def test_invalid_access_in_a_sidecar_fails_the_document(source: Path, sidecar: dict) -> None:
    write(source / "doc.txt", "x")
    write(source / "doc.txt.meta.json", json.dumps(sidecar))
    result = scan(source)
    assert found(result) == {} and "doc.txt" in reasons(result.failed)


@pytest.mark.parametrize(
    "sidecar",
    [
        b"{not json",
        b'["a", "list"]',
        b'{"file": "reserved key"}',
        b'{"page": 3}',
        b'{"nested": {"dict": 1}}',
        b'{"empty_list": []}',
        b'{"mixed_list": [1, "a"]}',
        b'{"null": null}',
    ],
    ids=["not-json", "not-object", "reserved-file", "reserved-page", "nested-dict", "empty-list", "mixed-list", "null"],
)
def test_invalid_sidecar_fails_the_document(source: Path, sidecar: bytes) -> None:
    write(source / "doc.txt", "text")
    write(source / "doc.txt.meta.json", sidecar)

    result = scan(source)

    assert result.files == []
    reason = reasons(result.failed)["doc.txt"]
    assert reason.startswith("invalid sidecar doc.txt.meta.json")


def test_orphan_sidecar_is_skipped_silently(source: Path) -> None:
    write(source / "nothing.txt.meta.json", "{}")
    result = scan(source)
    assert result.files == result.failed == result.ignored == []


def test_missing_source_raises(tmp_path: Path) -> None:
    with pytest.raises(SourceNotFound):
        scan(tmp_path / "does-not-exist")


def test_file_as_source_raises(tmp_path: Path) -> None:
    with pytest.raises(SourceNotFound):
        scan(write(tmp_path / "file.txt", "x"))


def test_sidecar_symlink_leaving_the_source_is_not_read(source: Path, tmp_path: Path) -> None:
    outside = write(tmp_path / "outside" / "private.json", json.dumps({"owner": "someone-else"}))
    write(source / "doc.txt", "text")
    (source / "doc.txt.meta.json").symlink_to(outside)

    result = scan(source)

    # Either refusing the sidecar (failed) or dropping it would be fine; reading it is not.
    assert all(f.metadata.get("owner") != "someone-else" for f in result.files)
