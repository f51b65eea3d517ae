"""The OpenAI-compatible chat API of the single-process app over a small real index, driven by the
official `openai` client (its HTTP client is the app's TestClient) and by raw HTTP for the wire format."""

from __future__ import annotations

import json

import openai
import pytest
from fastapi.testclient import TestClient
from index_builder import build_version
from test_serve_api import assert_error_json, build_index, clean_environment, settings_for

from rag_core.embedding import EmbeddingModel
from rag_core.index_store import VersionedIndex
from serve_app.local import create_local_app

VACATION = "handbook/vacation-policy.md"


@pytest.fixture(scope="module")
def http(tmp_path_factory: pytest.TempPathFactory):
    with pytest.MonkeyPatch.context() as patch:
        workdir = tmp_path_factory.mktemp("chat")
        clean_environment(patch, workdir)
        build_index(workdir / "index", EmbeddingModel.from_setting("auto", device="cpu"))
        yield TestClient(create_local_app(settings_for(workdir / "index")), raise_server_exceptions=False)


@pytest.fixture(scope="module")
def client(http: TestClient) -> openai.OpenAI:
    return openai.OpenAI(base_url="http://testserver/v1", api_key="not-needed", http_client=http, max_retries=0)


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def sse_chunks(body: str) -> list:
    lines = [block for block in body.strip().split("\n\n")]
    assert all(line.startswith("data: ") for line in lines), body
    payloads = [line[len("data: ") :] for line in lines]
    assert payloads[-1] == "[DONE]"
    return [json.loads(p) for p in payloads[:-1]]


def test_a_question_is_answered_with_citations_sources_and_usage(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model="rag", messages=[user("How many vacation days do employees get per year?")])
    assert completion.object == "chat.completion" and completion.model == "rag" and completion.id.startswith("chatcmpl-")
    (choice,) = completion.choices
    assert choice.finish_reason == "stop" and choice.message.role == "assistant"
    assert "25 vacation days" in choice.message.content and "[1]" in choice.message.content
    # Extra fields the official client keeps: the cited passages and how the answer was made.
    sources = completion.sources
    assert sources[0]["file"] == VACATION and "25 vacation days" in sources[0]["text"]
    assert completion.rag["rewrite"] == "as-is" and completion.rag["mode"] == "extractive"
    usage = completion.usage
    assert usage.prompt_tokens >= 9 and usage.completion_tokens >= 10
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_a_stream_follows_openais_chunks_and_ends_with_the_sources(client: openai.OpenAI) -> None:
    question = [user("How long must passwords be?")]
    whole = client.chat.completions.create(model="rag", messages=question, extra_body={"use_cache": False})
    chunks = list(
        client.chat.completions.create(
            model="rag", messages=question, stream=True, stream_options={"include_usage": True}, extra_body={"use_cache": False}
        )
    )
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content and "14 characters" in text
    finishing = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finishing) == 1 and finishing[0].choices[0].finish_reason == "stop"
    assert finishing[0].sources[0]["file"] == "it/security-faq.txt"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_the_wire_format_is_openais(http: TestClient) -> None:
    response = http.post("/v1/chat/completions", json={"model": "rag", "messages": [user("Where can I park my bicycle?")], "stream": True})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    chunks = sse_chunks(response.text)
    assert chunks[0]["choices"][0] == {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None, "logprobs": None}
    assert all(set(c["choices"][0]["delta"]) == {"content"} for c in chunks[1:-1])
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop" and chunks[-1]["choices"][0]["delta"] == {}
    assert "usage" not in chunks[-1]  # only with stream_options.include_usage
    assert {"created", "model", "id"} <= set(chunks[0])


def test_a_follow_up_is_made_standalone_before_retrieval(client: openai.OpenAI) -> None:
    first = "How many vacation days do employees get per year?"
    answer = client.chat.completions.create(model="rag", messages=[user(first)]).choices[0].message.content
    follow_up = client.chat.completions.create(model="rag", messages=[user(first), assistant(answer), user("Who has to approve them?")])
    rag = follow_up.rag
    assert rag["rewrite"] == "rules"
    assert rag["standalone_question"].startswith("Who has to approve them?") and "vacation" in rag["standalone_question"]
    assert follow_up.sources[0]["file"] == VACATION and "approved by your manager" in follow_up.choices[0].message.content
    third = client.chat.completions.create(
        model="rag",
        messages=[user(first), assistant(answer), user("Who has to approve them?"), assistant("x"), user("How far in advance?")],
    )
    assert "vacation" in third.rag["standalone_question"] and "two weeks" in third.choices[0].message.content


def test_a_new_topic_in_a_conversation_is_not_rewritten(client: openai.OpenAI) -> None:
    messages = [user("How many vacation days do employees get per year?"), assistant("25 [1]")]
    switched = client.chat.completions.create(model="rag", messages=[*messages, user("How are travel expenses reimbursed by finance?")])
    assert switched.rag["rewrite"] == "as-is"
    assert switched.rag["standalone_question"] == "How are travel expenses reimbursed by finance?"
    assert switched.sources[0]["file"] == "finance/expenses.pdf"


def test_the_cache_is_keyed_by_the_standalone_question(client: openai.OpenAI) -> None:
    # The same follow-up in two conversations must not share one cached answer.
    vacation = [user("How many vacation days do employees get per year?"), assistant("25 [1]"), user("What is the rule for them?")]
    passwords = [user("How long must passwords be in the security policy?"), assistant("14 [1]"), user("What is the rule for them?")]
    first = client.chat.completions.create(model="rag", messages=vacation)
    second = client.chat.completions.create(model="rag", messages=passwords)
    assert second.rag["cached"] is False and second.rag["standalone_question"] != first.rag["standalone_question"]
    assert second.sources[0]["file"] == "it/security-faq.txt" and first.sources[0]["file"] == VACATION
    again = client.chat.completions.create(model="rag", messages=vacation)
    assert again.rag["cached"] is True and again.rag["cache"] == "exact"
    assert again.choices[0].message.content == first.choices[0].message.content


def test_models_are_listed_and_an_unknown_model_is_a_404(client: openai.OpenAI, http: TestClient) -> None:
    assert [m.id for m in client.models.list().data] == ["rag"]
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=[user("Where can I park my bicycle?")])
    body = assert_error_json(http.post("/v1/chat/completions", json={"model": "nope", "messages": [user("hi there")]}), 404)
    assert "nope" in body["error"]


def test_unknown_fields_are_ignored_as_openai_does(http: TestClient) -> None:
    body = {
        "model": "rag",
        "messages": [{"role": "system", "content": "Answer in French."}, user("Where can I park my bicycle?")],
        "temperature": 0,
        "presence_penalty": 0.5,
        "seed": 7,
        "tools": [],
        "response_format": {"type": "text"},
    }
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    assert "basement garage" in response.json()["choices"][0]["message"]["content"]


@pytest.mark.parametrize(
    "body, expected",
    [
        ({"model": "rag", "messages": []}, "messages"),
        ({"model": "rag", "messages": [user("hi there"), assistant("hello")]}, "last message must be the user"),
        ({"model": "rag", "messages": [user("   ")]}, "blank"),
        ({"model": "rag", "messages": [user("x" * 4001)]}, "4000"),
        ({"model": "rag", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, "only text"),
        ({"model": "rag", "messages": [user("hi there")], "n": 2}, "n"),
        ({"model": "rag", "messages": [{"role": "wizard", "content": "hi"}]}, "role"),
        ({"model": "rag", "messages": [user("hi there")], "stream": "yes"}, "stream"),
        ({"messages": [user("hi there")]}, "model"),
    ],
)
def test_bad_chat_requests_are_422_json_errors(http: TestClient, body: dict, expected: str) -> None:
    error = assert_error_json(http.post("/v1/chat/completions", json=body), 422)
    assert expected in json.dumps(error["detail"])


def test_text_parts_are_read_as_the_question(client: openai.OpenAI) -> None:
    parts = [{"type": "text", "text": "Where can I park"}, {"type": "text", "text": "my bicycle?"}]
    completion = client.chat.completions.create(model="rag", messages=[{"role": "user", "content": parts}])
    assert completion.sources[0]["file"] == "office/parking.md"


SOURCED = [
    ("vacation.md", 1, "Employees receive 25 vacation days per year.", {"source": "handbook"}),
    ("vpn.md", 1, "Connect to the VPN before opening the intranet; vacation requests go through the portal.", {"source": "it"}),
    ("plans.md", 1, "Globex plans 40 vacation days for its own staff.", {"source": "globex-secrets", "tenant": "globex"}),
]


@pytest.fixture(scope="module")
def sourced_client(tmp_path_factory: pytest.TempPathFactory):
    with pytest.MonkeyPatch.context() as patch:
        workdir = tmp_path_factory.mktemp("chat-sources")
        clean_environment(patch, workdir)
        build_version(VersionedIndex(workdir / "index"), EmbeddingModel.from_setting("auto", device="cpu"), SOURCED)
        http = TestClient(create_local_app(settings_for(workdir / "index")), raise_server_exceptions=False)
        yield openai.OpenAI(base_url="http://testserver/v1", api_key="not-needed", http_client=http, max_retries=0)


def test_each_named_source_is_a_model_that_answers_from_it_alone(sourced_client: openai.OpenAI) -> None:
    # The anonymous caller reads tenant "default": the other tenant's source is not even listed.
    assert [m.id for m in sourced_client.models.list().data] == ["rag", "rag/handbook", "rag/it"]
    question = [user("How many vacation days do employees receive?")]
    everything = sourced_client.chat.completions.create(model="rag", messages=question, extra_body={"top_k": 10})
    assert {s["source"] for s in everything.sources} == {"handbook", "it"}
    it_only = sourced_client.chat.completions.create(model="rag/it", messages=question, extra_body={"top_k": 10})
    assert {s["file"] for s in it_only.sources} == {"vpn.md"} and it_only.sources[0]["source"] == "it"
    narrowed = sourced_client.chat.completions.create(
        model="rag/handbook", messages=question, extra_body={"filters": {"file": "vpn.md"}, "use_cache": False}
    )
    assert narrowed.sources == []  # the model's source and the request's filters both apply
    for hidden in ("rag/globex-secrets", "rag/nope", "rag/"):
        with pytest.raises(openai.NotFoundError):
            sourced_client.chat.completions.create(model=hidden, messages=question)
