"""The web page's routes on the single-process app: the page and its assets, each with the
Content-Security-Policy; nothing but the listed assets is served. Its behaviour in a browser:
tests/integration/test_web_page.py."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from rag_core.settings import load_settings
from serve_app.local import create_local_app
from serve_app.web.api_router import ASSETS, STATIC


def test_the_page_and_its_assets_carry_the_policy_and_nothing_else_is_served(clean_rag_env) -> None:
    settings = load_settings(index_dir=clean_rag_env / "index", embedding_device="cpu")
    with TestClient(create_local_app(settings)) as client:
        page = client.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "script-src 'self'" in page.headers["content-security-policy"]
        for name in re.findall(r'(?:src|href)="ui/([^"]+)"', page.text):
            asset = client.get(f"/ui/{name}")
            assert asset.status_code == 200 and "content-security-policy" in asset.headers, name
        assert set(re.findall(r'(?:src|href)="ui/([^"]+)"', page.text)) == set(ASSETS)
        for probe in ("/ui/index.html", "/ui/..%2fapi_router.py", "/ui/%2e%2e%2f%2e%2e%2fpyproject.toml"):
            assert client.get(probe).status_code == 404, probe
    assert {p.name for p in STATIC.iterdir()} == {*ASSETS, "index.html"}
