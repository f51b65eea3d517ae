"""The manifest of one index version (path -> content hash, chunk ids) and the diff that drives
incremental ingest."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class FileFingerprint:
    sha256: str  # of the file's bytes
    sidecar_sha256: str = ""  # of <file>.meta.json, "" when there is none

    def matches(self, other: FileFingerprint) -> bool:
        return self.sha256 == other.sha256 and self.sidecar_sha256 == other.sidecar_sha256


@dataclass(frozen=True)
class ManifestEntry:
    sha256: str
    sidecar_sha256: str
    size: int
    chunk_ids: tuple[str, ...]
    index_version: str  # the version that embedded this file's chunks
    # How its text was produced (parser and library versions, OCR engine, redaction settings);
    # "" for files indexed before it was recorded. A change re-parses the file.
    parse_signature: str = ""

    @property
    def fingerprint(self) -> FileFingerprint:
        return FileFingerprint(self.sha256, self.sidecar_sha256)


@dataclass
class Manifest:
    files: dict[str, ManifestEntry] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({path: asdict(entry) for path, entry in sorted(self.files.items())}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        raw = json.loads(text)
        return cls({path: ManifestEntry(**{**entry, "chunk_ids": tuple(entry["chunk_ids"])}) for path, entry in raw.items()})

    @classmethod
    def load(cls, path: Path) -> Manifest:
        return cls.from_json(path.read_text()) if path.exists() else cls()

    @property
    def chunk_count(self) -> int:
        return sum(len(entry.chunk_ids) for entry in self.files.values())


@dataclass(frozen=True)
class ManifestDiff:
    added: list[str]
    changed: list[str]
    unchanged: list[str]
    deleted: list[str]

    @property
    def to_embed(self) -> list[str]:
        return sorted(self.added + self.changed)


def diff_manifest(previous: Manifest, current: dict[str, FileFingerprint]) -> ManifestDiff:
    """Compare the files found now with the last version's manifest, by relative path."""
    added, changed, unchanged = [], [], []
    for path, fingerprint in sorted(current.items()):
        entry = previous.files.get(path)
        if entry is None:
            added.append(path)
        elif entry.fingerprint.matches(fingerprint):
            unchanged.append(path)
        else:
            changed.append(path)
    deleted = sorted(set(previous.files) - set(current))
    return ManifestDiff(added, changed, unchanged, deleted)
