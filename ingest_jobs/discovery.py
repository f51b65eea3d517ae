"""Finding the documents under --source: content hashes, sidecar metadata, and every file that
cannot be taken recorded with a reason."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rag_core.access import Access, AccessError, document_access
from rag_core.manifest import FileFingerprint
from rag_core.sidecar import SIDECAR_SUFFIX, validate_sidecar

_HASH_BLOCK = 1 << 20


class SourceNotFound(FileNotFoundError):
    """--source does not exist or is not a folder."""


@dataclass(frozen=True)
class SourceFile:
    path: str  # relative to the source folder, with forward slashes
    absolute: Path
    size: int
    sha256: str
    # SHA-256 of the sidecar's bytes and the document's access (tenant, groups): a change to either
    # re-indexes the document, even when the access comes from an ingest.access rule.
    sidecar_sha256: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def fingerprint(self) -> FileFingerprint:
        return FileFingerprint(self.sha256, self.sidecar_sha256)


@dataclass(frozen=True)
class SkippedFile:
    file: str
    reason: str


@dataclass
class ScanResult:
    files: list[SourceFile] = field(default_factory=list)
    failed: list[SkippedFile] = field(default_factory=list)  # documents we could not take: reported
    ignored: list[SkippedFile] = field(default_factory=list)  # not documents (other types, hidden, links out)

    @property
    def files_seen(self) -> int:
        return len(self.files) + len(self.failed)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(_HASH_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def access_fingerprint(sidecar_sha256: str, access: Access) -> str:
    return hashlib.sha256(f"{sidecar_sha256}|{access.scope_key}".encode()).hexdigest()


class SourceScanner:
    """Walks a folder without following links out of it and fingerprints each document."""

    def __init__(self, extensions: Iterable[str], max_file_bytes: int, access_rules: Iterable[Any] = (), default_tenant: str = "default"):
        self.extensions = {e.lower() for e in extensions}
        self.max_file_bytes = max_file_bytes
        self.access_rules = list(access_rules)
        self.default_tenant = default_tenant

    def scan(self, source: Path) -> ScanResult:
        if not source.is_dir():
            raise SourceNotFound(f"source folder not found: {source}")
        root = source.resolve()
        result = ScanResult()
        for directory, subdirs, names in os.walk(root):
            here = Path(directory)
            for name in list(subdirs):
                if name.startswith(".") or (here / name).is_symlink():
                    subdirs.remove(name)  # hidden folders and linked folders are not walked
                    relative = (here / name).relative_to(root).as_posix()
                    result.ignored.append(SkippedFile(relative, "hidden folder" if name.startswith(".") else "linked folder"))
            subdirs.sort()
            for name in sorted(names):
                self._consider(root, here / name, result)
        return result

    def _consider(self, root: Path, path: Path, result: ScanResult) -> None:
        relative = path.relative_to(root).as_posix()
        if path.name.endswith(SIDECAR_SUFFIX):
            return  # read together with its document
        if path.name.startswith("."):
            result.ignored.append(SkippedFile(relative, "hidden file"))
            return
        if path.suffix.lower() not in self.extensions:
            result.ignored.append(SkippedFile(relative, f"unsupported type {path.suffix or '(none)'}"))
            return
        if path.is_symlink():
            target = path.resolve()
            if not target.is_relative_to(root):
                result.ignored.append(SkippedFile(relative, "symlink leaves the source folder"))
                return
        try:
            size = path.stat().st_size
            if size > self.max_file_bytes:
                limit_mb = self.max_file_bytes / 2**20
                result.failed.append(SkippedFile(relative, f"file too large ({size / 2**20:.1f} MB > {limit_mb:g} MB limit)"))
                return
            sha = sha256_file(path)
        except OSError as exc:
            result.failed.append(SkippedFile(relative, f"cannot read: {exc.strerror or exc}"))
            return
        sidecar = path.with_name(path.name + SIDECAR_SUFFIX)
        metadata: dict[str, Any] = {}
        sidecar_sha = ""
        if sidecar.is_symlink() and not sidecar.resolve().is_relative_to(root):
            result.failed.append(SkippedFile(relative, f"sidecar {sidecar.name} is a symlink that leaves the source folder"))
            return
        if sidecar.is_file():
            try:
                raw = sidecar.read_bytes()
                metadata = validate_sidecar(json.loads(raw))
                sidecar_sha = hashlib.sha256(raw).hexdigest()
            except (OSError, ValueError) as exc:  # JSONDecodeError is a ValueError
                result.failed.append(SkippedFile(relative, f"invalid sidecar {sidecar.name}: {exc}"))
                return
        try:
            access = document_access(relative, metadata, self.access_rules, self.default_tenant)
        except AccessError as exc:
            result.failed.append(SkippedFile(relative, f"invalid access in {sidecar.name}: {exc}"))
            return
        metadata = {k: v for k, v in metadata.items() if k not in ("tenant", "groups")}
        metadata.update(access.chunk_metadata())
        sidecar_sha = access_fingerprint(sidecar_sha, access)
        result.files.append(SourceFile(relative, path, size, sha, sidecar_sha, metadata))
