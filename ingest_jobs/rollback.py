"""Point the index back at an earlier kept version: `python -m ingest_jobs.rollback [--to VERSION]`.

Without --to, the newest committed version older than the current one. `--list` shows the kept
versions. The switch is one atomic pointer replacement; readers pick it up on their next refresh.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rag_core.audit import default_actor, utc_now
from rag_core.index_store import IndexLockBusy, IndexStoreError, VersionedIndex
from rag_core.settings import load_settings


def previous_version(index: VersionedIndex) -> str:
    current = index.current_version()
    committed = index.committed_versions()
    older = [v for v in committed if current is None or int(v[1:]) < int(current[1:])]
    if not older:
        raise IndexStoreError(f"no kept version older than {current}; kept: {committed}")
    return older[-1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ingest_jobs.rollback", description=__doc__)
    parser.add_argument("--config", type=Path)
    parser.add_argument("--to", help="version to make current, e.g. v000003")
    parser.add_argument("--list", action="store_true", help="list kept versions and exit")
    args = parser.parse_args(argv)
    settings = load_settings(args.config)
    index = VersionedIndex.from_settings(settings)
    current = index.current_version()
    if args.list:
        for version in index.committed_versions():
            info = index.info(version)
            marker = "*" if version == current else " "
            print(
                f"{marker} {version}  {info.created_at}  chunks={info.chunks_total} files={info.files_total} model={info.model_spec.name}"
            )
        return 0
    actor = default_actor(settings.triggered_by)
    try:
        with index.lock(settings.ingest.lock_timeout_s, holder=f"rollback by {actor}"):
            target = args.to or previous_version(index)
            index.info(target)  # must exist and be committed
            index.set_current(target)
            index.record(
                {
                    "event": "rollback",
                    "status": "completed",
                    "triggered_by": actor,
                    "finished_at": utc_now(),
                    "index_version": target,
                    "previous_version": current,
                    "files": [],
                }
            )
    except IndexLockBusy as exc:
        print(json.dumps({"error": str(exc)}))
        return 75
    except IndexStoreError as exc:
        print(json.dumps({"error": str(exc)}))
        return 2
    print(json.dumps({"index_version": target, "previous_version": current}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
