"""Follow-up questions: retrieval hit@5 for the raw follow-up, the concatenated history and the
standalone rewrite, over labelled two- and three-turn conversations on the shared PDFs and SQuAD.

    python benchmarks/conversation_rewrite.py [--llm-url http://127.0.0.1:8090/v1 --llm-model NAME]

Conversations: benchmarks/data/conversations.jsonl (each turn names the file, or the SQuAD
paragraph, that holds its answer). Each conversation is played as a chat client would: every
earlier turn is asked, and answered by the service's own extractive answerer, through the rewrite
being measured, so the history a follow-up sees is what that method would have shown the user.

Rows (all through the service's own retrieval: the packaged MiniLM, hybrid dense + BM25, top 5):
- raw: the follow-up as typed;
- history: the whole conversation so far (every user and assistant message) and the follow-up;
- rewrite: serve_app.conversation.FollowUpRewriter (the embedded default, no LLM);
- llm (with --llm-url): the LLM's standalone question (the service's prompt), and what it costs.

Also measured: the first turns (standalone questions: the ceiling), and topic switches (each
conversation followed by another conversation's first question, which must not be rewritten into
the old topic).

Indexes (built once with the ingest job when missing): the 118 PDFs with OCR off, and the 646 SQuAD
dev paragraphs, one file each.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared" / "data"
TOP_K = 5


def build_index(index_dir: Path, source: Path, extra_env: dict[str, str]) -> None:
    if (index_dir / "CURRENT").exists() or any(index_dir.glob("versions/*")):
        return
    print(f"indexing {source} into {index_dir} ...", flush=True)
    env = {**os.environ, "RAG_INDEX_DIR": str(index_dir), "RAG_CONFIG": str(REPO_ROOT / "configs/rag.yaml"), **extra_env}
    subprocess.run(
        [sys.executable, "-m", "ingest_jobs.index", "--source", str(source)], cwd=REPO_ROOT, env=env, check=True, stdout=subprocess.DEVNULL
    )


def squad_folder(workdir: Path) -> Path:
    docs = workdir / "squad-docs"
    docs.mkdir(parents=True, exist_ok=True)
    for line in (SHARED / "qa/squad2_dev_cs224n/contexts.jsonl").open():
        context = json.loads(line)
        path = docs / f"{context['_id']}.txt"
        if not path.exists():
            path.write_text(f"{context['title']}\n\n{context['text']}\n")
    return docs


def expected_file(source: dict) -> str:
    return source["file"] if "file" in source else f"{source['context_id']}.txt"


class Player:
    """Plays conversations against one index, in process, with the service's own stages."""

    def __init__(self, index_dir: Path, llm_url: str | None, llm_model: str | None):
        from rag_core.settings import load_settings
        from serve_app.conversation import FollowUpRewriter
        from serve_app.generation import AnswerGenerator
        from serve_app.local import LocalStages

        self.settings = load_settings(REPO_ROOT / "configs/rag.yaml", index_dir=index_dir)
        self.stages = LocalStages(self.settings)
        self.extractive = AnswerGenerator.from_settings(self.settings)  # no llm_base_url: extractive
        self.rewriter = FollowUpRewriter()
        self.llm = None
        if llm_url:  # the service's own path: the Generator's condense, gated as Stages.standalone gates it
            self.llm = AnswerGenerator.from_settings(self.settings.model_copy(update={"llm_base_url": llm_url, "llm_model": llm_model}))
        self.llm_ms: list[float] = []
        self.llm_failures = 0

    async def search(self, query: str) -> list:
        from serve_app.retrieval_request import RetrievalRequest

        request = RetrievalRequest.resolve(self.settings.retrieval, query=query, top_k=TOP_K, access=None)
        if request.needs_vector:
            request = request.embedded(*await self.stages.embed(query))
        chunks, _ = await self.stages.retrieve(request)
        return chunks

    def standalone(self, method: str, history: list, question: str) -> str:
        from serve_app.conversation import REWRITE_LLM, needs_history

        if method == "raw" or not history:
            return question
        if method == "history":
            return "\n".join([*(t.content for t in history), question])
        if method == "rewrite":
            return self.rewriter.rewrite(history, question)
        assert method == "llm" and self.llm is not None
        if not needs_history(question):
            return question
        started = time.perf_counter()
        rewritten = self.llm.condense(history, question)
        self.llm_ms.append((time.perf_counter() - started) * 1000)
        if rewritten.how != REWRITE_LLM:  # the LLM's reply was refused: the deterministic rewrite stood in
            self.llm_failures += 1
        return rewritten.question

    async def play(self, method: str, questions: list[str]) -> list[tuple[str, list]]:
        """Each turn's query and its top chunks; earlier turns answered extractively into the history."""
        from serve_app.conversation import ROLE_ASSISTANT, ROLE_USER, Turn

        history: list = []
        played = []
        for question in questions:
            query = self.standalone(method, history, question)
            chunks = await self.search(query)
            played.append((query, chunks))
            answer = self.extractive.answer(query, chunks).text
            history += [Turn(ROLE_USER, question), Turn(ROLE_ASSISTANT, answer)]
        return played


def hit(chunks: list, source: dict) -> bool:
    return expected_file(source) in {c.file for c in chunks}


def answer_found(chunks: list, answer: str) -> bool:
    """Stricter than the file: a retrieved passage holds the turn's answer (whitespace-insensitive)."""
    wanted = " ".join(answer.lower().split())
    return any(wanted in " ".join(c.text.lower().split()) for c in chunks)


async def measure(player: Player, conversations: list[dict], methods: list[str]) -> dict:
    results: dict[str, dict[str, list[bool]]] = {m: {"first": [], "follow": [], "switch": [], "answer": []} for m in methods}
    examples: dict[str, list[str]] = {m: [] for m in methods}
    for position, conversation in enumerate(conversations):
        turns = conversation["turns"]
        other = conversations[(position + 1) % len(conversations)]["turns"][0]  # a new topic after the last turn
        questions = [t["question"] for t in turns] + [other["question"]]
        sources = [t["source"] for t in turns] + [other["source"]]
        answers = [t["answer"] for t in turns] + [other["answer"]]
        for method in methods:
            played = await player.play(method, questions)
            for turn, ((query, chunks), source, answer) in enumerate(zip(played, sources, answers)):
                kind = "first" if turn == 0 else ("switch" if turn == len(turns) else "follow")
                results[method][kind].append(hit(chunks, source))
                if kind == "follow":
                    results[method]["answer"].append(answer_found(chunks, answer))
                if kind == "follow" and len(examples[method]) < 3:
                    examples[method].append(query)
    return {"results": results, "examples": examples}


def share(values: list[bool]) -> float:
    return 100.0 * sum(values) / len(values) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conversations", type=Path, default=REPO_ROOT / "benchmarks/data/conversations.jsonl")
    parser.add_argument("--workdir", type=Path, default=Path.home() / ".cache/rag-eval/conversations")
    parser.add_argument("--pdf-index", type=Path, help="an index of ../shared/data/pdfs (default: built in --workdir)")
    parser.add_argument("--squad-index", type=Path, help="an index of the SQuAD paragraphs, one file each")
    parser.add_argument("--llm-url", help="OpenAI-compatible base URL: adds the llm row")
    parser.add_argument("--llm-model")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    conversations = [json.loads(line) for line in args.conversations.open() if line.strip()]
    pdf_index = args.pdf_index or args.workdir / "pdf-index"
    squad_index = args.squad_index or args.workdir / "squad-index"
    build_index(pdf_index, SHARED / "pdfs", {"RAG_INGEST__OCR__ENABLED": "false"})
    build_index(squad_index, squad_folder(args.workdir), {})
    methods = ["raw", "history", "rewrite"] + (["llm"] if args.llm_url else [])

    report: dict = {"methods": methods, "corpora": {}}
    llm_ms: list[float] = []
    llm_failures = 0
    for corpus, index_dir in (("pdfs", pdf_index), ("squad", squad_index)):
        player = Player(index_dir, args.llm_url, args.llm_model)
        subset = [c for c in conversations if c["corpus"] == corpus]
        report["corpora"][corpus] = asyncio.run(measure(player, subset, methods))
        llm_ms += player.llm_ms
        llm_failures += player.llm_failures

    print(f"\n{len(conversations)} conversations; hit@{TOP_K} (% of turns whose source is in the top {TOP_K})\n")
    print("| query | follow-ups: PDFs | SQuAD | all | answer in a top-5 passage (follow-ups) | first turns | topic switches |")
    print("|---|---|---|---|---|---|---|")
    for method in methods:
        cells = []
        for corpus in ("pdfs", "squad"):
            follow = report["corpora"][corpus]["results"][method]["follow"]
            cells.append(f"{share(follow):.1f} ({sum(follow)}/{len(follow)})")
        merged = {
            kind: [v for corpus in ("pdfs", "squad") for v in report["corpora"][corpus]["results"][method][kind]]
            for kind in ("first", "follow", "switch", "answer")
        }
        print(
            f"| {method} | {cells[0]} | {cells[1]} | **{share(merged['follow']):.1f}** ({len(merged['follow'])}) | "
            f"{share(merged['answer']):.1f} | {share(merged['first']):.1f} | {share(merged['switch']):.1f} |"
        )
        report[method] = {kind: share(values) for kind, values in merged.items()}
    if llm_ms:
        ordered = sorted(llm_ms)
        p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
        median = statistics.median(llm_ms)
        print(f"\nLLM rewrite: median {median:.0f} ms, p95 {p95:.0f} ms over {len(llm_ms)} calls")
        print(f"LLM replies refused (the deterministic rewrite used instead): {llm_failures}")
        report["llm_rewrite_ms"] = {"median": statistics.median(llm_ms), "p95": p95, "calls": len(llm_ms), "unusable": llm_failures}
    for method in methods:
        print(f"\n{method} examples:")
        for corpus in ("pdfs", "squad"):
            for query in report["corpora"][corpus]["examples"][method][:2]:
                print(f"  - {query[:300]!r}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    main()
