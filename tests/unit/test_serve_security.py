"""API keys, rate limits, tenant isolation, admin routes and CORS through the HTTP API of the
single-process app, on the real model and the machine's real Redis."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from index_builder import build_version

from rag_core.index_store import VersionedIndex
from serve_app import auth as auth_cli
from serve_app.auth import InsecureConfiguration, hash_key, is_loopback
from serve_app.local import create_local_app
from tests.redis_server import SHARED_REDIS_URL, shared_redis, unique_prefix
from tests.unit.test_serve_api import clean_environment, settings_for, sse_events

# Two tenants; acme has an HR-only document. Each text names its owner so a leak is visible.
CORPUS = [
    ("acme/vacation.md", 1, "Acme employees receive 25 vacation days per year.", {"tenant": "acme"}),
    ("acme/hr/salaries.md", 1, "Acme salary bands: engineers earn between 90k and 140k per year.", {"tenant": "acme", "groups": ["hr"]}),
    ("globex/vacation.md", 1, "Globex employees receive 18 vacation days per year.", {"tenant": "globex"}),
    ("globex/parking.md", 1, "Globex parking is free for employees in the north garage.", {"tenant": "globex"}),
]
KEYS = {
    "acme-staff": {"tenant": "acme", "groups": []},
    "acme-hr": {"tenant": "acme", "groups": ["hr"]},
    "globex-staff": {"tenant": "globex", "groups": []},
    "ops": {"tenant": "acme", "groups": [], "admin": True},
}
SECRET = {name: f"rag_test_{name}_0123456789abcdef" for name in KEYS}


def key_settings(**limits) -> list[dict]:
    return [{"name": name, "sha256": hash_key(SECRET[name]), **spec, **limits} for name, spec in KEYS.items()]


def bearer(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {SECRET[name]}"}


@pytest.fixture()
def make_app(tmp_path, model, monkeypatch):
    """make_app(**settings) -> TestClient over CORPUS with the keys above and the given settings."""
    clean_environment(monkeypatch, tmp_path)
    build_version(VersionedIndex(tmp_path / "index"), model, CORPUS)
    prefixes: list[str] = []
    clients: list[TestClient] = []

    def make(**overrides) -> TestClient:
        settings = settings_for(tmp_path / "index")
        prefix = unique_prefix("sec")
        prefixes.append(prefix)
        auth = {"keys": key_settings(), "rate_limit_enabled": False, "rate_limit_prefix": f"{prefix}:rl", **overrides.pop("auth", {})}
        settings = settings.model_validate(
            {
                **settings.model_dump(),
                "redis_url": SHARED_REDIS_URL,
                "cache": {**settings.cache.model_dump(), "key_prefix": prefix},
                "auth": auth,
                **overrides,
            }
        )
        client = TestClient(create_local_app(settings), raise_server_exceptions=False)
        clients.append(client.__enter__())
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)
    redis = shared_redis()
    for prefix in prefixes:
        for key in redis.scan_iter(match=f"{prefix}:*"):
            redis.delete(key)


def files_of(body: dict) -> set[str]:
    return {s["file"] for s in body.get("sources", body.get("results", []))}


# -- API keys -------------------------------------------------------------------------------------


def test_requests_without_a_valid_key_are_401_json(make_app) -> None:
    client = make_app()
    cases = [{}, {"Authorization": "Bearer wrong"}, {"X-API-Key": "wrong"}, {"Authorization": f"Basic {SECRET['acme-staff']}"}]
    for headers in cases:
        response = client.post("/v1/query", json={"question": "vacation days?"}, headers=headers)
        assert response.status_code == 401, headers
        assert response.headers["WWW-Authenticate"] == "Bearer"
        body = response.json()
        assert body["error"] and "Traceback" not in response.text
    # Also before any body validation: an unauthenticated caller learns nothing about the API.
    assert client.post("/v1/retrieve", json={"nonsense": 1}).status_code == 401
    assert client.get("/health").status_code == 200  # health stays open for load balancers


def test_bearer_and_x_api_key_are_both_accepted(make_app) -> None:
    client = make_app()
    for headers in (bearer("acme-staff"), {"X-API-Key": SECRET["acme-staff"]}):
        response = client.post("/v1/retrieve", json={"query": "vacation days"}, headers=headers)
        assert response.status_code == 200, response.text


def test_the_keys_cli_prints_a_key_whose_hash_is_in_the_config_entry(capsys) -> None:
    assert auth_cli.main(["new", "--name", "ci", "--tenant", "acme", "--groups", "eng,hr"]) == 0
    captured = capsys.readouterr()
    key = captured.err.strip().rsplit(" ", 1)[-1]
    entry = json.loads(captured.out)
    assert key.startswith("rag_") and len(key) > 40 and key not in captured.out
    assert entry == {"name": "ci", "sha256": hash_key(key), "tenant": "acme", "groups": ["eng", "hr"], "admin": False}


# -- secure by default ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host, loopback",
    [("127.0.0.1", True), ("::1", True), ("localhost", True), ("0.0.0.0", False), ("10.0.0.5", False), ("example.org", False)],
)
def test_loopback_addresses(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_no_keys_on_a_public_address_refuses_to_start(make_app) -> None:
    with pytest.raises(InsecureConfiguration, match="refusing to serve 0.0.0.0"):
        make_app(auth={"keys": []}, api={"host": "0.0.0.0"})
    assert make_app(api={"host": "0.0.0.0"}).post("/v1/retrieve", json={"query": "x"}, headers=bearer("ops")).status_code == 200
    explicit = make_app(auth={"keys": [], "enabled": False}, api={"host": "0.0.0.0"})
    assert explicit.post("/v1/retrieve", json={"query": "vacation"}).status_code == 200


def test_the_loopback_demo_without_keys_is_anonymous_in_the_default_tenant(make_app) -> None:
    client = make_app(auth={"keys": [], "anonymous_tenant": "globex"})
    body = client.post("/v1/retrieve", json={"query": "vacation days", "top_k": 10}).json()
    assert files_of(body) == {"globex/vacation.md", "globex/parking.md"}


# -- tenant isolation -----------------------------------------------------------------------------

QUESTIONS = ["How many vacation days do employees receive?", "What are the salary bands?", "Where is parking?"]


@pytest.mark.parametrize(
    "key, allowed",
    [
        ("acme-staff", {"acme/vacation.md"}),
        ("acme-hr", {"acme/vacation.md", "acme/hr/salaries.md"}),
        ("globex-staff", {"globex/vacation.md", "globex/parking.md"}),
    ],
)
def test_no_caller_ever_receives_a_chunk_outside_its_access(make_app, key: str, allowed: set[str]) -> None:
    client = make_app()
    seen: set[str] = set()
    for question in QUESTIONS:
        for mode in ("dense", "lexical", "hybrid"):
            seen |= files_of(client.post("/v1/retrieve", json={"query": question, "top_k": 10, "mode": mode}, headers=bearer(key)).json())
        answer = client.post("/v1/query", json={"question": question, "top_k": 10}, headers=bearer(key)).json()
        assert all(f in allowed for f in files_of(answer)), answer
        seen |= files_of(answer)
        events = sse_events(client.post("/v1/query", json={"question": question, "stream": True}, headers=bearer(key)).text)
        seen |= files_of(events[-1][1])
    assert seen == allowed


def test_a_client_filter_narrows_but_never_widens_access(make_app) -> None:
    client = make_app()
    for where in (
        {"acl_tenant": "acme"},
        {"$or": [{"acl_tenant": "acme"}, {"acl_open": True}]},
        {"file": {"$in": ["acme/vacation.md", "globex/vacation.md"]}},
    ):
        body = client.post(
            "/v1/retrieve", json={"query": "vacation days salary", "top_k": 10, "filters": where}, headers=bearer("globex-staff")
        ).json()
        assert not any(f.startswith("acme/") for f in files_of(body)), (where, body)
    narrowed = client.post(
        "/v1/retrieve", json={"query": "employees", "filters": {"file": "globex/parking.md"}}, headers=bearer("globex-staff")
    ).json()
    assert files_of(narrowed) == {"globex/parking.md"}


def test_cached_answers_never_cross_tenants_or_groups(make_app) -> None:
    client = make_app()
    question = {"question": "How many vacation days do employees receive?"}
    acme = client.post("/v1/query", json=question, headers=bearer("acme-staff")).json()
    acme_again = client.post("/v1/query", json=question, headers=bearer("acme-staff")).json()
    globex = client.post("/v1/query", json=question, headers=bearer("globex-staff")).json()
    hr = client.post("/v1/query", json=question, headers=bearer("acme-hr")).json()
    assert acme_again["cache"] == "exact" and "25 vacation days" in acme["answer"]
    assert globex["cached"] is False and "18 vacation days" in globex["answer"] and "25" not in globex["answer"]
    assert hr["cached"] is False  # same tenant, other groups: another scope
    streamed = sse_events(client.post("/v1/query", json={**question, "stream": True}, headers=bearer("globex-staff")).text)
    assert streamed[-1][1]["cache"] == "exact" and "18 vacation days" in streamed[-1][1]["answer"]


# -- rate limits ----------------------------------------------------------------------------------


def test_a_key_over_its_rate_gets_429_with_retry_after(make_app) -> None:
    client = make_app(auth={"keys": key_settings(rate_per_minute=6, burst=3), "rate_limit_enabled": True})
    statuses = [client.post("/v1/retrieve", json={"query": "vacation"}, headers=bearer("acme-staff")).status_code for _ in range(5)]
    assert statuses == [200, 200, 200, 429, 429]
    limited = client.post("/v1/retrieve", json={"query": "vacation"}, headers=bearer("acme-staff"))
    assert limited.status_code == 429 and 1 <= int(limited.headers["Retry-After"]) <= 10 and limited.json()["error"]
    # Buckets are per key: another key is unaffected.
    assert client.post("/v1/retrieve", json={"query": "vacation"}, headers=bearer("globex-staff")).status_code == 200


def test_replicas_share_one_bucket_in_redis(make_app) -> None:
    first = make_app(auth={"keys": key_settings(rate_per_minute=6, burst=4), "rate_limit_enabled": True})
    prefix = first.app.state.rate_limiter.key_prefix
    second = make_app(auth={"keys": key_settings(rate_per_minute=6, burst=4), "rate_limit_enabled": True, "rate_limit_prefix": prefix})
    statuses = [
        (first if i % 2 else second).post("/v1/retrieve", json={"query": "x"}, headers=bearer("acme-hr")).status_code for i in range(6)
    ]
    assert statuses.count(200) == 4 and statuses.count(429) == 2


def test_without_redis_each_replica_still_limits(make_app) -> None:
    client = make_app(
        redis_url="redis://127.0.0.1:1/0", auth={"keys": key_settings(rate_per_minute=6, burst=2), "rate_limit_enabled": True}
    )
    statuses = [client.post("/v1/retrieve", json={"query": "x"}, headers=bearer("acme-staff")).status_code for _ in range(4)]
    assert statuses == [200, 200, 429, 429]


# -- admin and CORS -------------------------------------------------------------------------------


def test_cache_purge_needs_an_admin_key(make_app) -> None:
    client = make_app()
    question = {"question": "How many vacation days do employees receive?"}
    client.post("/v1/query", json=question, headers=bearer("acme-staff"))
    assert client.post("/admin/cache/purge", headers=bearer("acme-staff")).status_code == 403
    assert client.post("/admin/cache/purge").status_code == 401
    assert client.post("/admin/cache/purge?version=latest", headers=bearer("ops")).status_code == 422
    purged = client.post("/admin/cache/purge", headers=bearer("ops"))
    assert purged.status_code == 200 and purged.json()["purged_keys"] >= 1
    assert client.post("/v1/query", json=question, headers=bearer("acme-staff")).json()["cached"] is False


def test_cors_allows_only_configured_origins(make_app) -> None:
    closed = make_app()
    preflight = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    assert "access-control-allow-origin" not in closed.options("/v1/query", headers=preflight).headers
    opened = make_app(api={"cors_origins": ["https://intranet.example"]})
    allowed = opened.options("/v1/query", headers={**preflight, "Origin": "https://intranet.example"})
    assert allowed.headers["access-control-allow-origin"] == "https://intranet.example"
    refused = opened.options("/v1/query", headers=preflight)
    assert refused.headers.get("access-control-allow-origin") != "https://evil.example"
