"""The manifest of one index version (document -> content hash, chunk ids) and the diff that drives
incremental ingest.

An index holds documents from several named sources (a folder given to `--source`, or the uploads
of the document API). A document's key is `<source>//<path>`, its path relative to its source; an
index from before sources were named has entries with the source "" whose key is the path alone
(`doc_key`). An ingest of one source diffs against that source's entries only: the others stay.
"""

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


LEGACY_SOURCE = ""  # entries written before sources were named


def doc_key(source: str, path: str) -> str:
    """The manifest key of a document, unique across the sources of one index: `<source>//<path>`.
    A relative path never holds "//", so no key of a named source equals an unnamed one's path."""
    return f"{source}//{path}" if source else path


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
    source: str = LEGACY_SOURCE  # the named source that holds the document
    path: str = ""  # relative to its source; "" in manifests written before sources (the key is the path)

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
        return cls({key: ManifestEntry(**{**entry, "chunk_ids": tuple(entry["chunk_ids"])}) for key, entry in raw.items()})

    def of_source(self, source: str) -> dict[str, ManifestEntry]:
        """This source's documents, by path within the source (an entry from before sources were
        named has no path of its own: its key is the path)."""
        return {entry.path or key: entry for key, entry in self.files.items() if entry.source == source}

    def sources(self) -> dict[str, int]:
        """Documents per source."""
        counts: dict[str, int] = {}
        for entry in self.files.values():
            counts[entry.source] = counts.get(entry.source, 0) + 1
        return dict(sorted(counts.items()))

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


def diff_manifest(previous: Manifest | dict[str, ManifestEntry], current: dict[str, FileFingerprint]) -> ManifestDiff:
    """Compare the files found now with the last version's entries for the same source, by path."""
    entries = previous.files if isinstance(previous, Manifest) else previous
    added, changed, unchanged = [], [], []
    for path, fingerprint in sorted(current.items()):
        entry = entries.get(path)
        if entry is None:
            added.append(path)
        elif entry.fingerprint.matches(fingerprint):
            unchanged.append(path)
        else:
            changed.append(path)
    deleted = sorted(set(entries) - set(current))
    return ManifestDiff(added, changed, unchanged, deleted)
