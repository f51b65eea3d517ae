"""GET /v1/index on the single-process app over a real two-tenant index: an admin key sees the
whole index, a tenant key only the counts of what it can read, and versions without other
tenants' counts."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from index_builder import build_version

from rag_core.index_store import VersionedIndex
from rag_core.settings import load_settings
from serve_app.auth import hash_key
from serve_app.local import create_local_app
from tests.unit.test_serve_api import clean_environment

CORPUS = [
    ("handbook.md", 1, "Acme employees receive 25 vacation days.", {"tenant": "acme", "source": "hr"}),
    ("handbook.md", 2, "Acme vacation requests need two weeks' notice.", {"tenant": "acme", "source": "hr"}),
    ("salaries.md", 1, "Acme salary bands are reviewed in March.", {"tenant": "acme", "groups": ["hr"], "source": "hr"}),
    ("parking.md", 1, "Globex parking is in the north garage.", {"tenant": "globex", "source": "facilities"}),
]
ADMIN, ACME = "rag_unit_admin_0123456789abcdef", "rag_unit_acme_0123456789abcdef"


@pytest.fixture(scope="module")
def client(tmp_path_factory, model):
    with pytest.MonkeyPatch.context() as patch:
        workdir = tmp_path_factory.mktemp("index-status")
        clean_environment(patch, workdir)
        index = VersionedIndex(workdir / "index")
        build_version(index, model, CORPUS[:2])
        build_version(index, model, CORPUS)
        keys = [
            {"name": "admin", "sha256": hash_key(ADMIN), "tenant": "ops", "admin": True},
            {"name": "acme", "sha256": hash_key(ACME), "tenant": "acme"},
        ]
        settings = load_settings(index_dir=workdir / "index", embedding_device="cpu", auth={"keys": keys, "rate_limit_enabled": False})
        with TestClient(create_local_app(settings)) as test_client:
            yield test_client


def test_an_admin_key_sees_the_whole_index_and_every_versions_counts(client: TestClient) -> None:
    status = client.get("/v1/index", headers={"Authorization": f"Bearer {ADMIN}"}).json()
    assert (status["scope"], status["tenant"], status["index_version"]) == ("all", None, "v000002")
    assert (status["chunks"], status["documents"], status["sources"]) == (4, 3, {"facilities": 1, "hr": 2})
    assert [(v["version"], v["served"], v["chunks_total"]) for v in status["versions"]] == [("v000001", False, 2), ("v000002", True, 4)]


def test_a_tenant_key_sees_only_what_it_can_read(client: TestClient) -> None:
    status = client.get("/v1/index", headers={"Authorization": f"Bearer {ACME}"}).json()
    assert (status["scope"], status["tenant"]) == ("tenant", "acme")
    assert (status["chunks"], status["documents"], status["sources"]) == (2, 1, {"hr": 1})  # not the hr group's salaries
    counts = [(v["version"], v["chunks_total"], v["files_total"]) for v in status["versions"]]
    assert counts == [("v000001", None, None), ("v000002", None, None)]
    assert client.get("/v1/index").status_code == 401
