"""The web page at `/`, driven in a real headless Chromium (Debian's, through Playwright) against
the running Serve graph with API keys and a real index: ask with a streamed, cited answer and open
the passage; a follow-up; upload a real HTML file, see it indexed, ask about it, delete it; a
wrong key; tenants kept apart; markup in chunk text shown as text; the Content-Security-Policy.
Screenshots at 375 and 1440 px go to $RAG_TEST_ARTIFACTS (default: test-artifacts/ in the repo)."""

from __future__ import annotations

import re
import time

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.browser import artifacts_dir
from tests.conftest import REPO_ROOT
from tests.integration.conftest import SECRET, bearer
from tests.integration.test_documents_api import wait_for_job

DOCS = REPO_ROOT.parent / "shared" / "data" / "docs"
ESSAY = "unstructured__ideas-page.html"  # Paul Graham, "How to Get New Ideas" (../shared/data/docs/MANIFEST.tsv)
WIDTHS = (375, 1440)


@pytest.fixture()
def page(browser, uploads_service):
    """A fresh browser context (its own session storage) on the page; page errors fail the test."""
    base, _ = uploads_service
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    opened.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    opened.goto(f"{base}/")
    yield opened
    context.close()
    assert not [e for e in errors if "401" not in e], errors  # a refused key logs its 401; nothing else may fail


def sign_in(page: Page, key: str) -> None:
    page.get_by_label("API key").fill(SECRET[key])
    page.get_by_role("button", name="Use key").click()
    expect(page.locator("#who")).to_contain_text("Signed in" if key != "admin" else "Admin key")


def ask(page: Page, question: str) -> None:
    turns = page.locator(".turn").count()
    page.get_by_label("Question").fill(question)
    page.get_by_role("button", name="Ask").click()
    expect(page.locator(".turn")).to_have_count(turns + 1)
    expect(page.locator(".turn").last.locator(".meta")).to_be_visible(timeout=60_000)


def screenshots(page: Page, name: str) -> None:
    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": 900})
        page.screenshot(path=str(artifacts_dir() / f"{name}-{width}.png"), full_page=True)
        assert page.evaluate("document.documentElement.scrollWidth") <= width, f"{name} scrolls sideways at {width} px"
    page.set_viewport_size({"width": 1440, "height": 900})


def test_the_page_is_served_with_a_policy_that_forbids_inline_and_foreign_scripts(uploads_service) -> None:
    base, _ = uploads_service
    response = httpx.get(f"{base}/")
    policy = response.headers["content-security-policy"]
    assert response.status_code == 200 and "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", response.text, flags=re.S)
    assert scripts and all('src="ui/' in attributes and not body.strip() for attributes, body in scripts)  # no inline code
    assert not re.search(r"https?://", response.text)  # no CDN: every asset from the app
    assert httpx.get(f"{base}/ui/app.js").headers["content-type"].startswith("text/javascript")
    assert httpx.get(f"{base}/ui/../../etc/passwd").status_code == 404


def test_ask_streams_a_cited_answer_and_a_citation_opens_its_passage(page: Page) -> None:
    sign_in(page, "staff")
    ask(page, "How many days of paid vacation does every full-time employee at Aurora Labs receive?")
    answer = page.locator(".turn .answer").first
    expect(answer).to_contain_text("27 days")
    assert int(answer.get_attribute("data-deltas")) >= 1  # read from the stream (extractive: one piece; LLM: below)
    expect(page.locator(".turn .meta").first).to_contain_text("extractive answer")
    expect(page.locator(".turn .meta").first).to_contain_text("answered now")
    page.locator(".turn .cite").first.click()
    expect(page.locator("#passage")).to_be_visible()
    expect(page.locator("#passage-title")).to_contain_text("vacation-policy.md")
    expect(page.locator("#passage-where")).to_contain_text("section")
    expect(page.locator("#passage-text mark")).to_contain_text("27 days")
    screenshots(page, "ask")

    page.get_by_role("button", name="New conversation").click()
    ask(page, "How many days of paid vacation does every full-time employee at Aurora Labs receive?")
    expect(page.locator(".turn .meta").first).to_contain_text("from the cache (exact)")
    page.get_by_role("tab", name="Ask").focus()
    page.keyboard.press("ArrowRight")
    expect(page.get_by_role("tab", name="Documents")).to_have_attribute("aria-selected", "true")
    page.keyboard.press("ArrowRight")
    expect(page.get_by_role("tab", name="Status")).to_have_attribute("aria-selected", "true")
    expect(page.locator("#index-status")).to_contain_text("tenant default")
    expect(page.locator("#versions-table")).to_contain_text("served now")
    screenshots(page, "status")


def test_a_follow_up_question_is_answered_from_the_conversation(page: Page) -> None:
    sign_in(page, "staff")
    ask(page, "How many days of paid vacation does every full-time employee at Aurora Labs receive?")
    ask(page, "And what about part-time employees?")
    follow_up = page.locator(".turn").nth(1)
    expect(follow_up.locator(".meta")).to_contain_text("Searched for:")
    expect(follow_up.locator(".sources")).to_contain_text("vacation-policy.md")
    expect(follow_up.locator(".answer")).to_contain_text("Part-time employees")


def test_upload_a_document_see_it_indexed_ask_about_it_then_delete_it(page: Page) -> None:
    sign_in(page, "acme")
    page.get_by_role("tab", name="Documents").click()
    # Dropped on the drop zone, as a person drags it from a file manager.
    dropped = page.evaluate_handle(
        "([name, text]) => { const d = new DataTransfer(); d.items.add(new File([text], name, {type: 'text/html'})); return d; }",
        [ESSAY, (DOCS / ESSAY).read_text()],
    )
    page.dispatch_event("#drop-zone", "drop", {"dataTransfer": dropped})
    expect(page.locator("#chosen")).to_have_text(ESSAY)
    page.get_by_role("button", name="Upload").click()
    expect(page.locator("#upload-status")).to_contain_text("Uploaded 1 file")
    row = page.locator(f"tr:has-text('{ESSAY}')")
    expect(row).to_contain_text("pending")
    expect(row.locator("td").nth(1)).to_have_text("indexed", timeout=300_000)  # the page polls while work is pending
    assert int(row.locator("td").nth(2).inner_text()) > 0 and re.fullmatch(r"v\d{6}", row.locator("td").nth(3).inner_text())
    screenshots(page, "documents")

    page.get_by_role("tab", name="Ask").click()
    expect(page.locator("#model")).to_contain_text("rag/uploads")
    ask(page, "According to the essay, what is the way to get new ideas?")
    expect(page.locator(".turn .sources").first).to_contain_text(f"acme/{ESSAY}")
    expect(page.locator(".turn .answer").first).to_contain_text("anomalies")
    marked = []  # each citation marks the passage sentence of the claim it follows
    for cite in page.locator(".turn .cite").all():
        cite.click()
        marked.append(page.locator("#passage-text mark").inner_text())
    assert any("notice anomalies" in text for text in marked), marked

    page.get_by_role("tab", name="Documents").click()
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name=f"Delete {ESSAY}").click()
    expect(page.locator("#upload-status")).to_contain_text("when job")
    expect(page.locator(f"tr:has-text('{ESSAY}')")).to_have_count(0, timeout=300_000)

    page.get_by_role("tab", name="Ask").click()
    page.get_by_role("button", name="New conversation").click()
    deadline = time.monotonic() + 30  # the replicas follow the new version within a second here
    while True:
        ask(page, "According to the essay, what is the way to get new ideas?")
        if ESSAY not in page.locator(".turn").last.inner_text() or time.monotonic() > deadline:
            break
    assert ESSAY not in page.locator(".turn").last.inner_text()


def test_a_wrong_key_shows_an_error_and_no_data(page: Page) -> None:
    expect(page.locator("#who")).to_contain_text("needs an API key")
    expect(page.locator("#error")).to_contain_text("401")
    page.get_by_label("API key").fill("rag_not_a_key_of_this_service")
    page.get_by_role("button", name="Use key").click()
    expect(page.locator("#error")).to_contain_text("invalid API key")
    page.get_by_role("tab", name="Documents").click()
    expect(page.locator("#documents-table")).to_be_hidden()
    page.get_by_role("tab", name="Status").click()
    expect(page.locator("#index-status dd")).to_have_count(0)
    page.get_by_role("tab", name="Ask").click()
    page.get_by_label("Question").fill("How many vacation days do employees get?")
    page.get_by_role("button", name="Ask").click()
    expect(page.locator("#error")).to_contain_text("401")
    expect(page.locator(".turn")).to_have_count(0)


def test_a_tenant_key_never_shows_another_tenants_document(page: Page, uploads_service, tmp_path) -> None:
    base, _ = uploads_service
    secret = "Globex keeps its emergency generator key in locker 42 of the east wing."
    accepted = httpx.post(f"{base}/v1/documents", headers=bearer("globex"), files=[("files", ("generator.md", secret))]).json()
    assert wait_for_job(base, "globex", accepted["job_id"])["status"] == "succeeded"
    markup = '<img src="x" onerror="window.__pwned = 1"> Acme badge printers are on floor <b>three</b>.'
    (tmp_path / "badges.md").write_text(markup)

    sign_in(page, "acme")
    page.get_by_role("tab", name="Documents").click()
    page.locator("#files").set_input_files(str(tmp_path / "badges.md"))  # picked with the file chooser
    page.get_by_role("button", name="Upload").click()
    row = page.locator("tr:has-text('badges.md')")
    expect(row.locator("td").nth(1)).to_have_text("indexed", timeout=300_000)
    expect(page.locator("#documents-table")).not_to_contain_text("generator.md")
    page.get_by_role("tab", name="Ask").click()
    ask(page, "Where does Globex keep its emergency generator key?")
    expect(page.locator(".turn").last).not_to_contain_text("generator.md")
    expect(page.locator(".turn").last).not_to_contain_text("locker 42")

    # Markup in a chunk is text on the page: shown literally, never an element, never run.
    ask(page, "On which floor are the Acme badge printers?")
    page.locator(".turn").last.locator(".cite").first.click()
    expect(page.locator("#passage-text")).to_contain_text('<img src="x" onerror="window.__pwned = 1">')
    assert page.locator("#passage img, .answer img, .answer b").count() == 0
    assert page.evaluate("window.__pwned") is None


def test_a_generative_answer_streams_into_the_page_piece_by_piece(browser, llama_server, samples_index, deploy_app) -> None:
    """With llama.cpp's server as the generator, the page shows the answer as its tokens arrive."""
    from tests.integration.test_serve_app import wait_for

    base_url, model = llama_server
    base = deploy_app("webllm", index_dir=samples_index.index_dir, llm_base_url=base_url, llm_model=model, generator={"max_tokens": 48})
    wait_for(f"{base}/health")
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    page = context.new_page()
    page.goto(f"{base}/")
    expect(page.locator("#who")).to_contain_text("anonymous caller")
    ask(page, "How many days of paid vacation does every full-time employee at Aurora Labs receive?")
    answer = page.locator(".turn .answer").first
    assert int(answer.get_attribute("data-deltas")) > 1  # token by token
    expect(page.locator(".turn .meta").first).to_contain_text("generative answer")
    expect(page.locator(".turn .sources").first).to_contain_text("vacation-policy.md")
    context.close()
