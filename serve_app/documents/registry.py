"""The uploads registry: what the document API knows about every uploaded document and ingest run,
and the staging folders the runs read. One registry per index, in one Ray actor on the head node
(serve_app.documents.actor), so every Ingress replica on any node reads the same state.

On the head node's disk, under `RAGSettings.uploads_dir`:

    queue/<tenant>/<name>             uploads waiting for the next run (with <name>.meta.json)
    source/<tenant>/<name>            what the current run reads: its --source folder
    runs/<run id>.delete              the documents a run deletes (--delete-from)
    job-settings.yaml                 the service's settings, the runs' --config (owner-only)
    registry.sqlite3                  documents, upload and delete requests, runs

Uploads land in `queue/` and move to `source/` only between runs, so a run never reads a file
being written, and uploads arriving during a run wait for the next one. A run is submitted once
uploads and deletes have been quiet for `documents.batch_wait_s`: a burst is one run. A run is
`python -m ingest_jobs.index --source source/ --source-name uploads --keep-absent`: it adds and
replaces what `source/` holds and keeps the source's other documents, so `source/` is emptied
once the run has indexed it; the originals are kept no longer than that.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shlex
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import unicodedata
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import yaml

from rag_core.access import Access
from rag_core.index_store import VersionedIndex
from rag_core.manifest import Manifest, doc_key
from rag_core.settings import RAGSettings
from rag_core.sidecar import SIDECAR_SUFFIX

log = logging.getLogger("serve_app.documents")

# Documents: pending (staged, waiting for or in a run), indexed, failed (with a reason), deleting
# (removed at the next run), deleted. Runs: Ray's job states, plus "submitting".
TERMINAL_JOB_STATES = {"SUCCEEDED", "FAILED", "STOPPED"}
EXIT_LOCKED = 75  # ingest_jobs.index: another run holds the index lock
MAX_RUN_ATTEMPTS = 3  # runs that failed as a whole before their documents are failed too
_MAX_NAME_BYTES = 200

_SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    id TEXT PRIMARY KEY, tenant TEXT NOT NULL, groups TEXT NOT NULL, name TEXT NOT NULL,
    sha256 TEXT NOT NULL, size INTEGER NOT NULL, sidecar TEXT NOT NULL, status TEXT NOT NULL,
    reason TEXT, request_id TEXT NOT NULL, run_id TEXT, attempts INTEGER NOT NULL DEFAULT 0,
    uploaded_by TEXT NOT NULL, uploaded_at REAL NOT NULL, updated_at REAL NOT NULL,
    indexed_version TEXT, deleted_version TEXT
);
CREATE TABLE IF NOT EXISTS requests (
    id TEXT PRIMARY KEY, kind TEXT NOT NULL, tenant TEXT NOT NULL, documents TEXT NOT NULL,
    created_at REAL NOT NULL, run_id TEXT
);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY, status TEXT NOT NULL, submitted_at REAL NOT NULL, finished_at REAL,
    summary TEXT, error TEXT, documents TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS documents_by_run ON documents (run_id);
CREATE INDEX IF NOT EXISTS requests_by_run ON requests (run_id);
"""


class UploadRejected(ValueError):
    """A request the registry refuses, with the HTTP status that says why."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status

    def __reduce__(self) -> tuple[Any, tuple[int, str]]:  # raised in the actor, re-raised in the Ingress
        return type(self), (self.status, str(self))


class UnknownId(LookupError):
    """No such document or job for this caller (another tenant's looks the same: 404)."""


@dataclass(frozen=True)
class Upload:
    name: str
    data: bytes


class JobClient(Protocol):
    def submit(self, submission_id: str, entrypoint: str, env_vars: dict[str, str]) -> None: ...
    def info(self, submission_id: str) -> tuple[str, int | None, str]: ...
    def logs(self, submission_id: str) -> str: ...


class RayJobs:
    """Ray's job submission SDK against the cluster's dashboard (JobClient). `address` "auto": the
    cluster this process runs in, whose GCS tells the SDK where its dashboard listens."""

    def __init__(self, address: str):
        self.address = address
        self._client: Any = None

    def _jobs(self) -> Any:
        if self._client is None:
            import ray
            from ray.job_submission import JobSubmissionClient

            address = ray.get_runtime_context().gcs_address if self.address == "auto" else self.address
            self._client = JobSubmissionClient(address)
        return self._client

    def submit(self, submission_id: str, entrypoint: str, env_vars: dict[str, str]) -> None:
        self._jobs().submit_job(entrypoint=entrypoint, submission_id=submission_id, runtime_env={"env_vars": env_vars})

    def info(self, submission_id: str) -> tuple[str, int | None, str]:
        details = self._jobs().get_job_info(submission_id)
        return str(details.status), getattr(details, "driver_exit_code", None), details.message or ""

    def logs(self, submission_id: str) -> str:
        return self._jobs().get_job_logs(submission_id)


class ProcessJobs:
    """Runs on this machine as child processes of the same CLI (JobClient), for the single-process
    app, which has no Ray job server: each run starts its own local Ray, as `python -m
    ingest_jobs.index` does when run by hand. Output goes to `<logs>/<run id>.log`."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self._processes: dict[str, subprocess.Popen] = {}

    def submit(self, submission_id: str, entrypoint: str, env_vars: dict[str, str]) -> None:
        env = {**os.environ, **env_vars, "PYTHONUNBUFFERED": "1"}
        with (self.log_dir / f"{submission_id}.log").open("wb") as log_file:
            self._processes[submission_id] = subprocess.Popen(
                shlex.split(entrypoint), env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
            )

    def info(self, submission_id: str) -> tuple[str, int | None, str]:
        process = self._processes.get(submission_id)
        if process is None:
            return "FAILED", None, "the service restarted while the run was going on"
        code = process.poll()
        if code is None:
            return "RUNNING", None, ""
        return ("SUCCEEDED" if code == 0 else "FAILED"), code, f"exit code {code}"

    def logs(self, submission_id: str) -> str:
        path = self.log_dir / f"{submission_id}.log"
        return path.read_text(errors="replace") if path.exists() else ""


def document_id(tenant: str, name: str) -> str:
    """Stable per tenant and file name: a same-name upload replaces the document."""
    return "doc_" + hashlib.sha256(f"{tenant}/{name}".encode()).hexdigest()[:24]


def check_filename(name: str | None, extensions: Iterable[str]) -> str:
    """The upload's file name as stored, or UploadRejected: a bare name with a supported extension,
    never a path (no separators, no '..', not hidden), never a sidecar."""
    if not name:
        raise UploadRejected(422, "every file needs a file name")
    normal = unicodedata.normalize("NFC", name)
    if "/" in normal or "\\" in normal or normal in (".", ".."):
        raise UploadRejected(422, f"file name {name!r} is a path; send the file's name alone")
    if any(unicodedata.category(c).startswith("C") for c in normal):
        raise UploadRejected(422, f"file name {name!r} holds control characters")
    if normal.startswith(".") or normal != normal.strip():
        raise UploadRejected(422, f"file name {name!r} may not start with a dot or a space")
    if len(normal.encode()) > _MAX_NAME_BYTES:
        raise UploadRejected(422, f"file name longer than {_MAX_NAME_BYTES} bytes")
    if normal.lower().endswith(SIDECAR_SUFFIX):
        raise UploadRejected(422, f"{SIDECAR_SUFFIX} files are metadata; send metadata as the form field 'metadata'")
    suffix = Path(normal).suffix.lower()
    allowed = sorted(extensions)
    if suffix not in allowed:
        raise UploadRejected(415, f"unsupported file type {suffix or '(none)'} of {name!r}; supported: {', '.join(allowed)}")
    return normal


def _write_hidden(target: Path, data: bytes) -> Path:
    """`data` in a hidden temporary file beside `target` (the scanner skips dot files), synced to
    disk; the caller renames it over `target`, so a reader never sees half a file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=".upload.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        os.unlink(temporary)
        raise
    return Path(temporary)


def _remove(path: Path) -> None:
    for target in (path, path.with_name(path.name + SIDECAR_SUFFIX)):
        target.unlink(missing_ok=True)


def summary_of(logs: str) -> dict[str, Any] | None:
    """The ingest job's summary: the last line of its output that is a JSON object with
    `index_version` or `error` and is not a log record (those have `ts` and `level`). Ray's own
    lines may follow it in a job's log."""
    for line in reversed(logs.splitlines()):
        line = line.strip()
        if line.startswith("{") and line.endswith("}"):
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict) and ("index_version" in value or "error" in value) and not {"ts", "level"} <= value.keys():
                return value
    return None


class UploadRegistry:
    """Documents, requests and runs in SQLite on the head node's disk; all methods are thread-safe."""

    def __init__(self, settings: RAGSettings, jobs: JobClient):
        self.settings = settings
        self.jobs = jobs
        self.root = settings.uploads_dir
        self.queue = self.root / "queue"
        self.source = self.root / "source"
        self.runs_dir = self.root / "runs"
        for folder in (self.queue, self.source, self.runs_dir):
            folder.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)  # unredacted originals until their run: the service's user only
        self.index = VersionedIndex.from_settings(settings)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.root / "registry.sqlite3", check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        self._last_change = 0.0
        self._retry_at = 0.0
        self._follow_errors = 0
        for leftover in self.queue.rglob(".upload.*"):  # an upload interrupted before its rename
            leftover.unlink(missing_ok=True)
        self._manifest_cache: tuple[str | None, Manifest] = ("", Manifest())

    def configure(self, settings: RAGSettings, jobs: JobClient | None = None) -> None:
        """Later settings of the same index (a redeploy): batching, limits, the store, the job client."""
        with self._lock:
            self.settings = settings
            self.index = VersionedIndex.from_settings(settings)
            if jobs is not None:
                self.jobs = jobs

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """One SQLite transaction, rolled back on any error: a failed step never leaves one open."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # -- requests from the Ingress -------------------------------------------------------------
    def stage(
        self, access: Access, uploads: list[Upload], metadata: dict[str, Any], uploaded_by: str, admin: bool = False
    ) -> dict[str, Any]:
        """Stage uploads for the next run. Identical bytes and metadata of a pending document, or of
        one the current version holds, change nothing; anything else replaces the document of that
        name, unless the caller cannot read it (409). All or nothing."""
        extensions = self.settings.ingest.extensions
        names = [check_filename(upload.name, extensions) for upload in uploads]
        if len(set(names)) != len(names):
            raise UploadRejected(422, "the same file name twice in one upload")
        # The access goes in the sidecar, as a folder's owner would write it (no "groups": open to the tenant).
        fields = {**metadata, "tenant": access.tenant, **({"groups": list(access.groups)} if access.groups else {})}
        sidecar = json.dumps(fields, sort_keys=True)
        groups = json.dumps(list(access.groups))
        request_id = "ing_" + uuid.uuid4().hex[:24]
        now = time.time()
        with self._lock:
            staged: list[tuple[Path, Path]] = []  # (temporary, final): renamed only once the rows are committed
            accepted: list[str] = []
            duplicates: list[str] = []
            current = self._current_manifest()[1]
            try:
                with self._transaction():
                    for name, upload in zip(names, uploads):
                        doc = document_id(access.tenant, name)
                        sha = hashlib.sha256(upload.data).hexdigest()
                        row = self._row(doc)
                        if row is not None and not admin and not self._readable(row, access):
                            raise UploadRejected(409, f"{name!r} is the name of a document in this tenant that this key cannot read")
                        if row and row["sha256"] == sha and row["sidecar"] == sidecar and self._holds(row, current):
                            duplicates.append(doc)
                            continue
                        target = self.queue / access.tenant / name
                        staged.append((_write_hidden(target, upload.data), target))
                        staged.append((_write_hidden(target, sidecar.encode()), target.with_name(name + SIDECAR_SUFFIX)))
                        self._db.execute(
                            "INSERT INTO documents (id, tenant, groups, name, sha256, size, sidecar, status, reason, request_id, "
                            "run_id, attempts, uploaded_by, uploaded_at, updated_at) VALUES (?,?,?,?,?,?,?,'pending',NULL,?,NULL,0,?,?,?) "
                            "ON CONFLICT(id) DO UPDATE SET groups=excluded.groups, sha256=excluded.sha256, size=excluded.size, "
                            "sidecar=excluded.sidecar, status='pending', reason=NULL, request_id=excluded.request_id, run_id=NULL, "
                            "attempts=0, uploaded_by=excluded.uploaded_by, uploaded_at=excluded.uploaded_at, "
                            "updated_at=excluded.updated_at, indexed_version=NULL, deleted_version=NULL",
                            (doc, access.tenant, groups, name, sha, len(upload.data), sidecar, request_id, uploaded_by, now, now),
                        )
                        accepted.append(doc)
                    if accepted:
                        self._db.execute(
                            "INSERT INTO requests (id, kind, tenant, documents, created_at) VALUES (?, 'upload', ?, ?, ?)",
                            (request_id, access.tenant, json.dumps(accepted), now),
                        )
            except BaseException:
                for temporary, _ in staged:  # nothing half-written: no row, no file, the earlier upload untouched
                    temporary.unlink(missing_ok=True)
                raise
            for temporary, final in staged:
                os.replace(temporary, final)
            if accepted:
                self._last_change = time.monotonic()
            documents = [self._public(self._row(doc)) for doc in [*accepted, *duplicates]]
        job = request_id if accepted else documents[0]["job_id"]
        return {"job_id": job, "documents": documents, "duplicates": duplicates}

    def delete(self, access: Access, admin: bool, doc: str) -> dict[str, Any]:
        """Remove a document: at once when it never reached the index, else by the next run."""
        with self._lock:
            row = self._visible(doc, access, admin)
            if row["status"] in ("deleted", "deleting"):
                return self._public(row)
            _remove(self.queue / row["tenant"] / row["name"])  # a replacement waiting for its run goes too
            in_index = doc_key(self._source_name, f"{row['tenant']}/{row['name']}") in self._current_manifest()[1].files
            now = time.time()
            if not in_index and row["run_id"] is None:
                _remove(self.source / row["tenant"] / row["name"])  # left by a failed run
                with self._transaction():
                    self._db.execute("UPDATE documents SET status='deleted', reason=NULL, updated_at=? WHERE id=?", (now, doc))
                return self._public(self._row(doc))
            request_id = "ing_" + uuid.uuid4().hex[:24]
            with self._transaction():
                self._db.execute(
                    "UPDATE documents SET status='deleting', reason=NULL, request_id=?, run_id=NULL, attempts=0, updated_at=? WHERE id=?",
                    (request_id, now, doc),
                )
                self._db.execute(
                    "INSERT INTO requests (id, kind, tenant, documents, created_at) VALUES (?, 'delete', ?, ?, ?)",
                    (request_id, row["tenant"], json.dumps([doc]), now),
                )
            self._last_change = time.monotonic()
            return self._public(self._row(doc))

    def documents(self, access: Access, admin: bool, include_deleted: bool = False) -> list[dict[str, Any]]:
        with self._lock:
            if admin:
                rows = self._db.execute("SELECT * FROM documents ORDER BY tenant, name").fetchall()
            else:
                rows = self._db.execute("SELECT * FROM documents WHERE tenant=? ORDER BY name", (access.tenant,)).fetchall()
            return [self._public(r) for r in rows if (admin or self._readable(r, access)) and (include_deleted or r["status"] != "deleted")]

    def document(self, access: Access, admin: bool, doc: str) -> dict[str, Any]:
        with self._lock:
            return self._public(self._visible(doc, access, admin))

    def job(self, access: Access, admin: bool, job: str) -> dict[str, Any]:
        """An upload's or delete's request id, or a run's id; either resolves to the run."""
        with self._lock:
            request = self._db.execute("SELECT * FROM requests WHERE id=?", (job,)).fetchone()
            if request is not None:
                run = self._db.execute("SELECT * FROM runs WHERE id=?", (request["run_id"],)).fetchone() if request["run_id"] else None
                kind, documents = request["kind"], json.loads(request["documents"])
            else:
                run = self._db.execute("SELECT * FROM runs WHERE id=?", (job,)).fetchone()
                if run is None:
                    raise UnknownId(job)
                kind, documents = "run", json.loads(run["documents"])
            rows = [r for d in documents if (r := self._row(d)) is not None and (admin or self._readable(r, access))]
            if not rows:  # another tenant's or group's request or run looks like none at all
                raise UnknownId(job)
            return self._job_view(job, kind, run, rows, admin)

    def status(self) -> dict[str, Any]:
        with self._lock:
            counts = dict(self._db.execute("SELECT status, count(*) FROM documents GROUP BY status").fetchall())
            running = self._db.execute("SELECT id FROM runs WHERE finished_at IS NULL").fetchone()
            return {"documents": counts, "running": running["id"] if running else None, "staging_dir": str(self.root)}

    # -- the run loop ----------------------------------------------------------------------------
    def tick(self) -> None:
        """One step: follow the running job to its end, else start a run when work waits."""
        with self._lock:
            running = self._db.execute("SELECT * FROM runs WHERE finished_at IS NULL").fetchone()
            if running is not None:
                self._follow(running)
                return
            if time.monotonic() < self._retry_at:
                return
            waiting, oldest = self._db.execute(
                "SELECT count(*), min(updated_at) FROM documents WHERE status IN ('pending', 'deleting') AND run_id IS NULL"
            ).fetchone()
            if not waiting:
                return
            wait = self.settings.documents.batch_wait_s
            # Quiet for batch_wait_s, or a steady trickle that never goes quiet: no upload waits for ever.
            if time.monotonic() - self._last_change < wait and time.time() - oldest < max(10 * wait, 10.0):
                return
            self._start_run()

    def _start_run(self) -> None:
        rows = self._db.execute("SELECT * FROM documents WHERE status IN ('pending', 'deleting') AND run_id IS NULL").fetchall()
        run_id = "rag-uploads-" + uuid.uuid4().hex[:16]
        deletes: list[str] = []
        members: list[str] = []
        now = time.time()
        with self._transaction():
            for row in rows:
                relative = f"{row['tenant']}/{row['name']}"
                if row["status"] == "deleting":
                    deletes.append(relative)
                    _remove(self.source / relative)
                else:
                    staged = self.queue / relative
                    if staged.exists():
                        (self.source / row["tenant"]).mkdir(parents=True, exist_ok=True)
                        os.replace(staged, self.source / relative)
                        sidecar = staged.with_name(staged.name + SIDECAR_SUFFIX)
                        if sidecar.exists():
                            os.replace(sidecar, (self.source / relative).with_name(staged.name + SIDECAR_SUFFIX))
                    elif not (self.source / relative).exists():  # kept by a failed run, else lost
                        self._db.execute(
                            "UPDATE documents SET status='failed', reason='the staged file is missing; upload it again', "
                            "updated_at=? WHERE id=?",
                            (now, row["id"]),
                        )
                        continue
                members.append(row["id"])
                self._db.execute("UPDATE documents SET run_id=?, updated_at=? WHERE id=?", (run_id, now, row["id"]))
                self._db.execute("UPDATE requests SET run_id=? WHERE id=?", (run_id, row["request_id"]))
            if members:
                self._db.execute(
                    "INSERT INTO runs (id, status, submitted_at, documents) VALUES (?, 'SUBMITTING', ?, ?)",
                    (run_id, now, json.dumps(members)),
                )
        if not members:
            return
        entrypoint, env_vars = self._entrypoint(run_id, deletes)
        try:
            self.jobs.submit(run_id, entrypoint, env_vars)
        except Exception as exc:  # the job server is down or refuses: the documents wait for a retry
            log.warning("ingest run not submitted", extra={"fields": {"run": run_id, "error": str(exc)[:300]}})
            self._end_run(run_id, "FAILED", None, f"not submitted: {exc}"[:500], retry=True, refused=True)
            return
        self._db.execute("UPDATE runs SET status='PENDING' WHERE id=?", (run_id,))
        log.info("ingest run submitted", extra={"fields": {"run": run_id, "documents": len(members), "deletes": len(deletes)}})

    def _entrypoint(self, run_id: str, deletes: list[str]) -> tuple[str, dict[str, str]]:
        config = self.root / "job-settings.yaml"
        # The service's own settings, so the run writes the index the service reads, with the same
        # parsing, redaction and model; not the API keys or the LLM's, which a run has no use for.
        _write_private(config, yaml.safe_dump(self.settings.as_config(exclude={"auth", "llm_api_key"}), sort_keys=False))
        argv = [
            sys.executable,
            "-m",
            "ingest_jobs.index",
            "--config",
            str(config),
            "--source",
            str(self.source),
            "--source-name",
            self._source_name,
            "--keep-absent",
        ]
        if deletes:
            listing = self.runs_dir / f"{run_id}.delete"
            _write_private(listing, "".join(f"{path}\n" for path in deletes))
            argv += ["--delete-from", str(listing)]
            if self.settings.documents.purge_deleted:
                argv.append("--purge-deleted")
        # Environment variables outrank a config file: the index's location is pinned both ways.
        env = {"RAG_INDEX_DIR": str(self.settings.index_dir)}
        if self.settings.chroma_url:
            env["RAG_CHROMA_URL"] = self.settings.chroma_url
        return shlex.join(argv), env

    def _follow(self, run: sqlite3.Row) -> None:
        if run["status"] == "SUBMITTING":  # the registry stopped between its record and the submission
            self._end_run(run["id"], "FAILED", None, "interrupted before submission", retry=True)
            return
        try:
            status, exit_code, message = self.jobs.info(run["id"])
            self._follow_errors = 0
        except Exception as exc:
            # The job server down for a moment, or the job unknown to it (a restarted cluster keeps no
            # job records): after a minute of failures the run is given up and its documents retried.
            self._follow_errors += 1
            log.warning("cannot read the ingest run's state", extra={"fields": {"run": run["id"], "error": str(exc)[:300]}})
            if self._follow_errors * self.settings.documents.poll_interval_s >= 60:
                self._follow_errors = 0
                self._end_run(run["id"], "FAILED", None, f"the job's state could not be read: {exc}"[:500], retry=True)
            return
        if status != run["status"]:
            self._db.execute("UPDATE runs SET status=? WHERE id=?", (status, run["id"]))
        if status not in TERMINAL_JOB_STATES:
            return
        try:
            summary = summary_of(self.jobs.logs(run["id"]))
        except Exception as exc:
            summary = {"error": f"the job's output could not be read: {exc}"[:500]}
        if status == "SUCCEEDED" and summary is not None and "error" not in summary:
            self._end_run(run["id"], status, summary, None, retry=False)
            return
        error = (summary or {}).get("error") or message or f"job {status.lower()}"
        self._end_run(run["id"], status, summary, str(error)[:1000], retry=True, refused=exit_code == EXIT_LOCKED)

    def _end_run(
        self, run_id: str, status: str, summary: dict[str, Any] | None, error: str | None, retry: bool, refused: bool = False
    ) -> None:
        """`refused`: the run never ran (the job server unreachable, the index lock busy), which
        counts as no attempt: uploads wait out any outage of the job API, never failed by it."""
        now = time.time()
        members = self._db.execute("SELECT * FROM documents WHERE run_id=?", (run_id,)).fetchall()
        version = (summary or {}).get("index_version") if error is None else None
        manifest = self.index.manifest(version) if version else Manifest()  # read before the transaction
        with self._transaction():
            self._db.execute(
                "UPDATE runs SET status=?, finished_at=?, summary=?, error=? WHERE id=?",
                (status, now, json.dumps(summary) if summary is not None else None, error, run_id),
            )
            if error is None:
                self._settle(members, summary or {}, manifest, now)
            else:
                # The run failed as a whole: its documents wait for the next one (their files stay in
                # source/), unless runs keep failing for them; a refused run is no failure.
                for row in members:
                    attempts = row["attempts"] + (0 if refused else 1)
                    if attempts >= MAX_RUN_ATTEMPTS:
                        self._db.execute(
                            "UPDATE documents SET status='failed', reason=?, run_id=NULL, attempts=?, updated_at=? WHERE id=?",
                            (f"ingest run {run_id} failed: {error}"[:1000], attempts, now, row["id"]),
                        )
                    else:
                        self._db.execute(
                            "UPDATE documents SET run_id=NULL, attempts=?, updated_at=? WHERE id=?", (attempts, now, row["id"])
                        )
            self._forget_old_runs()
        if error is None:
            shutil.rmtree(self.source, ignore_errors=True)  # every file in it was read by this run
            self.source.mkdir(parents=True, exist_ok=True)
        else:
            for row in members:
                if row["attempts"] + (0 if refused else 1) >= MAX_RUN_ATTEMPTS:
                    _remove(self.source / row["tenant"] / row["name"])
            self._retry_at = time.monotonic() + self.settings.documents.retry_after_s
        log.info("ingest run ended", extra={"fields": {"run": run_id, "status": status, "documents": len(members), "error": error}})

    def _settle(self, members: list[sqlite3.Row], summary: dict[str, Any], manifest: Manifest, now: float) -> None:
        version = summary.get("index_version")
        failures = {f.get("file"): f.get("reason", "") for f in summary.get("files_failed", []) if isinstance(f, dict)}
        for row in members:
            relative = f"{row['tenant']}/{row['name']}"
            entry = manifest.files.get(doc_key(self._source_name, relative))
            if row["status"] == "deleting":
                if entry is None:
                    update = ("deleted", None, None, version)
                else:
                    update = ("failed", f"still in index version {version} after its delete run; delete it again", None, None)
            elif relative in failures:
                update = ("failed", failures[relative], None, None)
            elif entry is not None and entry.sha256 == row["sha256"]:
                update = ("indexed", None, version, None)
            else:
                update = ("failed", f"the ingest run did not index it (index version {version})", None, None)
            status, reason, indexed, deleted = update
            self._db.execute(
                "UPDATE documents SET status=?, reason=?, indexed_version=COALESCE(?, indexed_version), "
                "deleted_version=COALESCE(?, deleted_version), updated_at=? WHERE id=?",
                (status, reason, indexed, deleted, now, row["id"]),
            )

    def _forget_old_runs(self) -> None:
        keep = self.settings.documents.keep_finished_runs
        old = self._db.execute(
            "SELECT id FROM runs WHERE finished_at IS NOT NULL ORDER BY finished_at DESC LIMIT -1 OFFSET ?", (keep,)
        ).fetchall()
        for (run_id,) in old:
            self._db.execute("DELETE FROM runs WHERE id=?", (run_id,))
            self._db.execute("DELETE FROM requests WHERE run_id=?", (run_id,))
            for suffix in (".delete", ".log"):
                (self.runs_dir / f"{run_id}{suffix}").unlink(missing_ok=True)

    # -- views ------------------------------------------------------------------------------------
    @property
    def _source_name(self) -> str:
        return self.settings.documents.source_name

    def _row(self, doc: str) -> sqlite3.Row | None:
        return self._db.execute("SELECT * FROM documents WHERE id=?", (doc,)).fetchone()

    def _holds(self, row: sqlite3.Row, manifest: Manifest) -> bool:
        """Waiting for a run, or in `manifest` with these bytes (so not after a rollback dropped it)."""
        if row["status"] == "pending":
            return True
        entry = manifest.files.get(doc_key(self._source_name, f"{row['tenant']}/{row['name']}"))
        return row["status"] == "indexed" and entry is not None and entry.sha256 == row["sha256"]

    @staticmethod
    def _readable(row: sqlite3.Row, access: Access) -> bool:
        groups = json.loads(row["groups"])
        return row["tenant"] == access.tenant and (not groups or bool(set(groups) & set(access.groups)))

    def _visible(self, doc: str, access: Access, admin: bool) -> sqlite3.Row:
        row = self._row(doc)
        if row is None or not (admin or self._readable(row, access)):
            raise UnknownId(doc)
        return row

    def _current_manifest(self) -> tuple[str | None, Manifest]:
        version = self.index.current_version()
        if version != self._manifest_cache[0]:
            self._manifest_cache = (version, self.index.manifest(version))
        return self._manifest_cache

    def _public(self, row: sqlite3.Row) -> dict[str, Any]:
        """A document as the API shows it; chunks and version from the current index version, so a
        rollback that dropped a document shows as such."""
        version, manifest = self._current_manifest()
        relative = f"{row['tenant']}/{row['name']}"
        entry = manifest.files.get(doc_key(self._source_name, relative))
        status, reason = row["status"], row["reason"]
        if status == "indexed" and (entry is None or entry.sha256 != row["sha256"]):
            status, reason = "failed", f"not in the current index version {version} (rolled back?); upload it again"
        sidecar = json.loads(row["sidecar"])
        return {
            "id": row["id"],
            "name": row["name"],
            "file": relative,
            "source": self._source_name,
            "tenant": row["tenant"],
            "groups": json.loads(row["groups"]),
            "metadata": {k: v for k, v in sidecar.items() if k not in ("tenant", "groups")},
            "sha256": row["sha256"],
            "size": row["size"],
            "status": status,
            "reason": reason,
            "chunks": len(entry.chunk_ids) if entry is not None and entry.sha256 == row["sha256"] else None,
            "index_version": version if entry is not None and entry.sha256 == row["sha256"] else None,
            "deleted_in_version": row["deleted_version"],
            "job_id": row["request_id"],
            "uploaded_at": row["uploaded_at"],
            "updated_at": row["updated_at"],
        }

    def _job_view(self, job: str, kind: str, run: sqlite3.Row | None, rows: list[sqlite3.Row], admin: bool) -> dict[str, Any]:
        summary = json.loads(run["summary"]) if run is not None and run["summary"] else None
        if summary is not None and not admin:
            # A run indexes every tenant's uploads. A key sees the whole summary of a run that held only
            # documents it can read; of a shared run, the outcome and its own documents' failures, never
            # other documents' names or counts.
            own = {f"{r['tenant']}/{r['name']}" for r in rows}
            if set(json.loads(run["documents"])) <= {r["id"] for r in rows}:
                summary = {k: v for k, v in summary.items() if k not in ("source", "sources", "parse_nodes", "embed_nodes")}
            else:
                kept = ("index_version", "new_version_created", "versions_purged", "duration_s", "error")
                summary = {k: summary[k] for k in kept if k in summary}
            for key in ("files_failed", "files_incomplete"):
                summary[key] = [f for f in summary.get(key, []) if f.get("file") in own]
        if run is None:
            state = "queued"
        else:
            state = {"SUBMITTING": "queued", "PENDING": "pending", "RUNNING": "running", "SUCCEEDED": "succeeded"}.get(
                run["status"], "failed"
            )
            if run["error"] is not None and run["finished_at"] is not None:
                state = "failed"
            if state == "failed" and any(r["run_id"] is None and r["status"] in ("pending", "deleting") for r in rows):
                state = "queued"  # the run failed as a whole; its documents wait for the next (error says why)
        return {
            "id": job,
            "kind": kind,
            "status": state,
            "run_id": run["id"] if run is not None else None,
            "error": run["error"] if run is not None else None,
            "submitted_at": run["submitted_at"] if run is not None else None,
            "finished_at": run["finished_at"] if run is not None else None,
            "summary": summary,
            "documents": [self._public(r) for r in rows],
        }


def _write_private(path: Path, text: str) -> None:
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mkstemp: mode 0600
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(temporary, path)


def start_run_loop(registry: UploadRegistry, name: str = "ingest-runs") -> threading.Event:
    """A daemon thread calling `registry.tick()` every poll interval; set the event to stop it."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                registry.tick()
            except Exception:  # the loop must outlive any one bad step; the next tick retries
                log.exception("uploads registry step failed")
            stop.wait(registry.settings.documents.poll_interval_s)

    threading.Thread(target=loop, name=name, daemon=True).start()
    return stop
