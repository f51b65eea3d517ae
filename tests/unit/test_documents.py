"""The document API without a cluster: file-name checks, the uploads registry's staging (tenants,
replacement, duplicates, all or nothing, deletes before any run), the settings a run gets, and
the routes' 4xx answers on the single-process app. Runs that index uploads, through Ray jobs and
in-process: tests/integration/test_documents_api.py."""

from __future__ import annotations

import hashlib
import json
import pickle

import pytest
import yaml
from fastapi.testclient import TestClient

from rag_core.access import Access, document_access
from rag_core.settings import load_settings
from rag_core.sidecar import validate_sidecar
from serve_app.auth import hash_key
from serve_app.documents.registry import (
    ProcessJobs,
    UnknownId,
    Upload,
    UploadRegistry,
    UploadRejected,
    check_filename,
    summary_of,
)
from serve_app.local import create_local_app
from tests.unit.test_serve_api import clean_environment

EXTENSIONS = [".docx", ".md", ".pdf", ".txt"]
ACME, ACME_HR, GLOBEX = Access.of("acme"), Access.of("acme", ["hr"]), Access.of("globex")


@pytest.mark.parametrize("name", ["report.pdf", "Résumé 2024.docx", "notes.v2.md", "a..b.txt", "UPPER.PDF"])
def test_a_plain_file_name_is_kept(name: str) -> None:
    assert check_filename(name, EXTENSIONS) == name


@pytest.mark.parametrize(
    ("name", "status"),
    [
        ("../../etc/passwd.txt", 422),
        ("hr/salaries.md", 422),
        ("..\\windows.pdf", 422),
        ("..", 422),
        (".hidden.md", 422),
        (" leading-space.pdf", 422),
        ("report.pdf.meta.json", 422),
        ("tab\there.pdf", 422),
        ("nul\x00.pdf", 422),
        ("", 422),
        (None, 422),
        ("x" * 200 + ".pdf", 422),
        ("setup.exe", 415),
        ("README", 415),
    ],
)
def test_a_path_a_hidden_name_or_an_unsupported_type_is_refused(name: str | None, status: int) -> None:
    with pytest.raises(UploadRejected) as refused:
        check_filename(name, EXTENSIONS)
    assert refused.value.status == status


@pytest.fixture
def registry(clean_rag_env) -> UploadRegistry:
    """A registry of its own; nothing calls tick(), so no run starts."""
    settings = load_settings(index_dir=clean_rag_env / "index")
    return UploadRegistry(settings, ProcessJobs(clean_rag_env))


def staged_files(registry: UploadRegistry) -> dict[str, bytes]:
    return {p.relative_to(registry.queue).as_posix(): p.read_bytes() for p in registry.queue.rglob("*") if p.is_file()}


def test_the_same_name_in_two_tenants_is_two_documents_and_neither_sees_the_other(registry: UploadRegistry) -> None:
    acme = registry.stage(ACME, [Upload("plan.md", b"Acme plan")], {}, "acme-key")["documents"][0]
    globex = registry.stage(GLOBEX, [Upload("plan.md", b"Globex plan")], {}, "globex-key")["documents"][0]
    assert acme["id"] != globex["id"] and acme["file"] == "acme/plan.md" and globex["file"] == "globex/plan.md"
    assert staged_files(registry)["acme/plan.md"] == b"Acme plan" and staged_files(registry)["globex/plan.md"] == b"Globex plan"
    assert [d["sha256"] for d in registry.documents(GLOBEX, admin=False)] == [hashlib.sha256(b"Globex plan").hexdigest()]
    for lookup in (registry.document, registry.delete):
        with pytest.raises(UnknownId):
            lookup(GLOBEX, False, acme["id"])
    with pytest.raises(UnknownId):
        registry.job(GLOBEX, False, acme["job_id"])
    assert staged_files(registry)["acme/plan.md"] == b"Acme plan"  # the refused delete changed nothing
    assert {d["tenant"] for d in registry.documents(Access.of("ops"), admin=True)} == {"acme", "globex"}


def test_identical_bytes_are_a_duplicate_and_anything_else_replaces_the_document(registry: UploadRegistry) -> None:
    first = registry.stage(ACME, [Upload("plan.md", b"version one")], {"team": "ops"}, "k")
    doc = first["documents"][0]["id"]
    again = registry.stage(ACME, [Upload("plan.md", b"version one")], {"team": "ops"}, "k")
    assert again["duplicates"] == [doc] and again["job_id"] == first["job_id"]

    relabelled = registry.stage(ACME, [Upload("plan.md", b"version one")], {"team": "finance"}, "k")
    assert relabelled["duplicates"] == [] and relabelled["job_id"] != first["job_id"]
    replaced = registry.stage(ACME, [Upload("plan.md", b"version two")], {"team": "finance"}, "k")
    assert replaced["documents"][0]["id"] == doc and replaced["job_id"] not in (first["job_id"], relabelled["job_id"])
    assert staged_files(registry)["acme/plan.md"] == b"version two"
    sidecar = json.loads(staged_files(registry)["acme/plan.md.meta.json"])
    assert sidecar == {"team": "finance", "tenant": "acme"}
    assert [(d["id"], d["status"], d["job_id"]) for d in registry.documents(ACME, False)] == [(doc, "pending", replaced["job_id"])]
    job = registry.job(ACME, False, replaced["job_id"])
    assert job["status"] == "queued" and job["run_id"] is None and [d["id"] for d in job["documents"]] == [doc]


def test_an_upload_is_all_or_nothing(registry: UploadRegistry) -> None:
    registry.stage(ACME, [Upload("kept.md", b"kept")], {}, "k")
    for files in ([Upload("new.md", b"new"), Upload("../escape.md", b"x")], [Upload("twice.md", b"1"), Upload("twice.md", b"2")]):
        with pytest.raises(UploadRejected):
            registry.stage(ACME, files, {}, "k")
    assert set(staged_files(registry)) == {"acme/kept.md", "acme/kept.md.meta.json"}
    assert [d["name"] for d in registry.documents(ACME, False)] == ["kept.md"]


def test_the_sidecars_written_for_uploads_are_ones_the_ingest_accepts(registry: UploadRegistry) -> None:
    registry.stage(ACME, [Upload("open.md", b"open")], {"kind": "note", "tags": ["a", "b"]}, "k")
    registry.stage(ACME_HR, [Upload("closed.md", b"closed")], {}, "hr-key")
    for name, access in (("open.md", Access.of("acme")), ("closed.md", ACME_HR)):
        sidecar = validate_sidecar(json.loads(staged_files(registry)[f"acme/{name}.meta.json"]))
        assert document_access(f"acme/{name}", sidecar, [], "default") == access


def test_group_documents_are_visible_to_their_groups_only(registry: UploadRegistry) -> None:
    staged = registry.stage(ACME_HR, [Upload("salaries.md", b"bands")], {}, "hr-key")
    doc = staged["documents"][0]
    assert registry.documents(ACME, False) == [] and [d["id"] for d in registry.documents(ACME_HR, False)] == [doc["id"]]
    for lookup in (registry.delete, registry.document):
        with pytest.raises(UnknownId):
            lookup(ACME, False, doc["id"])
    with pytest.raises(UnknownId):
        registry.job(ACME, False, staged["job_id"])
    with pytest.raises(UploadRejected) as refused:  # nor may it replace what it cannot read
        registry.stage(ACME, [Upload("salaries.md", b"other bands")], {}, "staff-key")
    assert refused.value.status == 409 and staged_files(registry)["acme/salaries.md"] == b"bands"


def test_a_refusal_raised_in_the_registry_actor_reaches_the_ingress_with_its_status() -> None:
    again = pickle.loads(pickle.dumps(UploadRejected(415, "unsupported file type .exe")))
    assert (again.status, str(again)) == (415, "unsupported file type .exe")


def test_a_document_deleted_before_its_run_is_gone_at_once(registry: UploadRegistry) -> None:
    doc = registry.stage(ACME, [Upload("draft.md", b"draft")], {}, "k")["documents"][0]
    deleted = registry.delete(ACME, False, doc["id"])
    assert deleted["status"] == "deleted" and deleted["deleted_in_version"] is None
    assert staged_files(registry) == {} and registry.documents(ACME, False) == []
    assert [d["status"] for d in registry.documents(ACME, False, include_deleted=True)] == ["deleted"]
    assert registry.status()["documents"] == {"deleted": 1}


def test_the_summary_is_the_last_json_line_that_is_not_a_log_record() -> None:
    summary = {"index_version": "v000002", "files_failed": []}
    logs = "\n".join(
        [
            '{"ts": "2026-12-01T00:00:00Z", "level": "info", "msg": "progress", "files_done": 1}',
            json.dumps(summary),
            "(MapBatches(parse_and_chunk_batch) pid=1) PII types not detectable here",
            '{"ts": "2026-12-01T00:00:01Z", "level": "warning", "msg": "shutdown", "error": "not a summary"}',
        ]
    )
    assert summary_of(logs) == summary
    assert summary_of('{"error": "another ingest run is writing the index"}') == {"error": "another ingest run is writing the index"}
    assert summary_of("Traceback (most recent call last):\n...") is None


def test_a_run_gets_the_services_settings_with_secrets_but_without_keys(clean_rag_env) -> None:
    settings = load_settings(
        index_dir=clean_rag_env / "index",
        ingest={"passwords": ["s3cret"], "pii": {"enabled": True}},
        documents={"batch_wait_s": 5},
        llm_api_key="sk-not-for-runs",
        auth={"keys": [{"name": "k", "sha256": hash_key("rag_x"), "tenant": "acme"}]},
    )
    config = clean_rag_env / "run.yaml"
    config.write_text(yaml.safe_dump(settings.as_config(exclude={"auth", "llm_api_key"})))
    again = load_settings(config)
    assert again.ingest.passwords[0].get_secret_value() == "s3cret" and again.documents.batch_wait_s == 5
    assert again.llm_api_key is None and again.auth.keys == []
    assert again.model_dump(exclude={"auth", "llm_api_key"}) == settings.model_dump(exclude={"auth", "llm_api_key"})


ADMIN_KEY, ACME_KEY = "rag_test_admin_0123456789abcdef", "rag_test_acme_0123456789abcdef"


@pytest.fixture(scope="module")
def upload_api(tmp_path_factory):
    """(client, settings) of the single-process app with an admin key, a key of tenant acme in
    group eng, a 10 KB file limit and a 40 KB upload body limit; runs never start here."""
    with pytest.MonkeyPatch.context() as patch:
        workdir = tmp_path_factory.mktemp("uploads")
        clean_environment(patch, workdir)
        keys = [
            {"name": "admin", "sha256": hash_key(ADMIN_KEY), "tenant": "ops", "admin": True},
            {"name": "acme", "sha256": hash_key(ACME_KEY), "tenant": "acme", "groups": ["eng"]},
        ]
        settings = load_settings(
            index_dir=workdir / "index",
            embedding_device="cpu",
            auth={"keys": keys, "rate_limit_enabled": False},
            documents={"max_file_mb": 10 / 1024, "max_request_mb": 40 / 1024, "batch_wait_s": 86_400},
        )
        with TestClient(create_local_app(settings)) as client:
            yield client, settings


def post(client: TestClient, key: str, files: list[tuple[str, bytes]], **form: str):
    return client.post(
        "/v1/documents", headers={"Authorization": f"Bearer {key}"}, files=[("files", (n, data)) for n, data in files], data=form
    )


@pytest.mark.parametrize(
    ("files", "form", "status", "says"),
    [
        ([("../../etc/cron.d/job.txt", b"x")], {}, 422, "is a path"),
        ([("setup.exe", b"MZ")], {}, 415, "unsupported file type .exe"),
        ([("big.txt", b"x" * 12_000)], {}, 413, "MB limit of a file"),
        (
            [("a.txt", b"x" * 9_000)] * 1
            + [("b.txt", b"y" * 9_000), ("c.txt", b"z" * 9_000), ("d.txt", b"w" * 9_000), ("e.txt", b"v" * 9_000)],
            {},
            413,
            "request body over",
        ),
        ([("empty.txt", b"")], {}, 422, "is empty"),
        ([("a.txt", b"x")], {"metadata": "[1, 2]"}, 422, "metadata: must be a JSON object"),
        ([("a.txt", b"x")], {"metadata": '{"tenant": "globex"}'}, 422, "is set by the API key"),
        ([("a.txt", b"x")], {"metadata": '{"acl_tenant": "globex"}'}, 422, "is reserved"),
        ([("a.txt", b"x")], {"tenant": "globex"}, 403, "only an admin key"),
        ([("a.txt", b"x")], {"groups": "hr"}, 403, "groups it belongs to"),
        ([("a.txt", b"x")], {"groups": ""}, 403, "needs an admin key"),
        ([("a.txt", b"x")], {"tenant": "bad tenant!"}, 403, "only an admin key"),
    ],
)
def test_bad_uploads_get_a_json_4xx_and_stage_nothing(upload_api, files, form, status, says) -> None:
    client, settings = upload_api
    response = post(client, ACME_KEY, files, **form)
    assert response.status_code == status, response.text
    assert says in response.json()["error"] and "Traceback" not in response.text
    assert not any(p.is_file() for p in (settings.uploads_dir / "queue" / "acme").rglob("*"))


def test_an_upload_is_accepted_at_once_and_listed_for_its_tenant_only(upload_api) -> None:
    client, settings = upload_api
    accepted = post(client, ACME_KEY, [("handbook.md", b"# Handbook\n\nLunch is at noon.\n")], metadata='{"team": "people"}')
    assert accepted.status_code == 202, accepted.text
    body = accepted.json()
    doc = body["documents"][0]
    assert (doc["tenant"], doc["groups"], doc["status"], doc["metadata"]) == ("acme", ["eng"], "pending", {"team": "people"})
    acme = {"Authorization": f"Bearer {ACME_KEY}"}
    assert [d["id"] for d in client.get("/v1/documents", headers=acme).json()["documents"]] == [doc["id"]]
    assert client.get(f"/v1/ingest/jobs/{body['job_id']}", headers=acme).json()["status"] == "queued"

    for_globex = post(client, ADMIN_KEY, [("handbook.md", b"Globex handbook")], tenant="globex", groups="legal")
    assert for_globex.status_code == 202 and for_globex.json()["documents"][0]["groups"] == ["legal"]
    other = for_globex.json()["documents"][0]["id"]
    assert client.get(f"/v1/documents/{other}", headers=acme).status_code == 404
    assert client.delete(f"/v1/documents/{other}", headers=acme).status_code == 404
    assert client.get(f"/v1/ingest/jobs/{for_globex.json()['job_id']}", headers=acme).status_code == 404
    assert (settings.uploads_dir / "queue" / "acme" / "handbook.md").read_bytes() == b"# Handbook\n\nLunch is at noon.\n"
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    assert {d["tenant"] for d in client.get("/v1/documents", headers=admin).json()["documents"]} == {"acme", "globex"}
    assert client.get("/v1/documents/doc_0000", headers=acme).json()["error"].startswith("no document or job")
    assert client.get("/v1/documents", headers={"Authorization": "Bearer wrong"}).status_code == 401


def test_the_json_routes_keep_their_own_body_limit(upload_api) -> None:
    client, _ = upload_api
    response = client.post("/v1/retrieve", headers={"Authorization": f"Bearer {ACME_KEY}"}, content=b'{"query": "' + b"x" * 70_000 + b'"}')
    assert response.status_code == 413


def test_with_the_document_api_turned_off_its_routes_answer_501(clean_rag_env) -> None:
    settings = load_settings(index_dir=clean_rag_env / "index", embedding_device="cpu", documents={"enabled": False})
    with TestClient(create_local_app(settings)) as client:
        response = client.get("/v1/documents")
    assert response.status_code == 501 and "documents.enabled: false" in response.json()["error"]
