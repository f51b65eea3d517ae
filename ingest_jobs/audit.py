"""Read the audit trail: `python -m ingest_jobs.audit [--last N] [--json] [--files]`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rag_core.index_store import VersionedIndex
from rag_core.settings import load_settings


def format_record(record: dict, with_files: bool) -> str:
    summary = record.get("summary") or {}
    counts = ", ".join(
        f"{key.removeprefix('files_')} {summary[key]}" for key in ("files_indexed", "files_unchanged", "files_deleted") if key in summary
    )
    failed = [f for f in record.get("files", []) if f.get("action") == "failed"]
    line = (
        f"{record.get('finished_at', '?')}  {record.get('event', '?'):<20} {record.get('status', '?'):<9} "
        f"version={record.get('index_version') or '-'} by={record.get('triggered_by', '?')} "
        f"source={record.get('source', '-')}"
    )
    if counts:
        line += f"  [{counts}, failed {len(failed)}]"
    if record.get("error"):
        line += f"  error: {record['error']}"
    if with_files:
        for entry in record.get("files", []):
            reason = f" ({entry['reason']})" if entry.get("reason") else ""
            line += f"\n    {entry['action']:<8} {entry['file']}{reason}"
    return line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ingest_jobs.audit", description=__doc__)
    parser.add_argument("--config", type=Path)
    parser.add_argument("--last", type=int, default=20, help="newest N records (0 = all)")
    parser.add_argument("--json", action="store_true", help="raw JSON lines")
    parser.add_argument("--files", action="store_true", help="list each file's action")
    args = parser.parse_args(argv)
    index = VersionedIndex.from_settings(load_settings(args.config))
    records = list(index.audit.records())
    if args.last:
        records = records[-args.last :]
    for record in records:
        print(json.dumps(record) if args.json else format_record(record, args.files))
    if not records and not args.json:
        print(f"no audit records in {index.audit.path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
