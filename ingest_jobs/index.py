"""Entry point: index a folder incrementally, or rebuild a version from Parquet.

    python -m ingest_jobs.index --source DIR [--source-name NAME] [--config FILE] [--full]
    python -m ingest_jobs.index --rebuild-from-parquet VERSION_DIR_OR_CHUNKS_DIR [--config FILE]
    ray job submit --working-dir . -- python -m ingest_jobs.index --source DIR

The last stdout line is always one JSON object: the run summary, or {"error": ...}.
Exit codes: 0 the run completed (per-file failures included); 2 bad arguments, config or missing
source; 75 another run holds the index lock; 1 the index could not be written. On any non-zero
exit the previous version stays current.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from pydantic import ValidationError

from ingest_jobs.discovery import SourceNotFound
from ingest_jobs.runner import IngestRun, InvalidSourceName, rebuild_from_parquet
from rag_core.embedding import EmbeddingModelError
from rag_core.index_store import PARQUET_DIR, IndexLockBusy, VersionedIndex
from rag_core.logs import configure_json_logging
from rag_core.settings import ConfigFileError, load_settings

log = logging.getLogger("ingest_jobs")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_LOCKED = 0, 1, 2, 75


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m ingest_jobs.index", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--source", type=Path, help="folder of .pdf/.txt/.md documents to mirror into the index")
    target.add_argument(
        "--rebuild-from-parquet", type=Path, metavar="DIR", help="a version folder (or its chunks/ folder) to load without re-embedding"
    )
    parser.add_argument(
        "--source-name",
        help="the name this folder is indexed under (default: the folder's name). An index holds several named sources; "
        "a run mirrors its own source only, so indexing another folder keeps the first one's documents",
    )
    parser.add_argument(
        "--keep-absent",
        action="store_true",
        help="add and replace what the folder holds, keep this source's documents it does not hold (a staging folder "
        "of uploads); only --delete removes documents",
    )
    parser.add_argument(
        "--delete", action="append", default=[], metavar="PATH", help="with --keep-absent: a document of this source to remove"
    )
    parser.add_argument("--delete-from", type=Path, metavar="FILE", help="with --keep-absent: documents to remove, one path a line")
    parser.add_argument(
        "--purge-deleted", action="store_true", help="also drop kept versions that hold a deleted document (no rollback brings it back)"
    )
    parser.add_argument("--config", type=Path, help="settings YAML (default: $RAG_CONFIG or configs/rag.yaml)")
    parser.add_argument("--full", action="store_true", help="re-embed every file into a new version")
    return parser.parse_args(argv)


def _emit(payload: dict) -> None:
    sys.stdout.flush()
    print(json.dumps(payload), flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_json_logging()
    try:
        settings = load_settings(args.config)
    except (ConfigFileError, ValidationError) as exc:
        _emit({"error": f"invalid configuration: {exc}"})
        return EXIT_USAGE
    current = VersionedIndex.from_settings(settings).current_version
    try:
        if args.rebuild_from_parquet is not None:
            parquet_dir = args.rebuild_from_parquet
            if (parquet_dir / PARQUET_DIR).is_dir():
                parquet_dir = parquet_dir / PARQUET_DIR
            summary = rebuild_from_parquet(settings, parquet_dir)
        else:
            delete = list(args.delete)
            if args.delete_from is not None:
                delete += [line.strip() for line in args.delete_from.read_text().splitlines() if line.strip()]
            if delete and not args.keep_absent:
                _emit({"error": "--delete and --delete-from need --keep-absent (a mirrored folder deletes what it lacks)"})
                return EXIT_USAGE
            run = IngestRun(
                settings,
                args.source,
                full=args.full,
                source_name=args.source_name,
                keep_absent=args.keep_absent,
                delete=delete,
                purge_deleted=args.purge_deleted,
            )
            summary = run.run()
    except (SourceNotFound, InvalidSourceName) as exc:
        _emit({"error": str(exc), "index_version": current()})
        return EXIT_USAGE
    except IndexLockBusy as exc:
        _emit({"error": str(exc), "index_version": current()})
        return EXIT_LOCKED
    except EmbeddingModelError as exc:
        _emit({"error": str(exc), "index_version": current()})
        return EXIT_USAGE
    except Exception as exc:
        log.exception("ingest run failed; the previous index version stays current")
        error = f"{type(exc).__name__}: {exc}"
        if disk_full(exc):
            error = f"the index disk is full ({settings.index_dir}): free space or move index_dir, then run again; {error}"
        _emit({"error": error, "index_version": current()})
        return EXIT_FAILED
    _emit(summary.to_dict())
    return EXIT_OK


def disk_full(exc: BaseException) -> bool:
    """Whether the run failed for want of disk space: ENOSPC or EFBIG anywhere in the chain, or
    SQLite's (Chroma's) own report of it."""
    import errno

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EFBIG):
            return True
        if "disk is full" in str(seen) or "No space left on device" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


if __name__ == "__main__":
    sys.exit(main())
