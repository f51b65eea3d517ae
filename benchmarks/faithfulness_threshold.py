"""Calibrates the faithfulness estimate's cosine threshold on SQuAD paragraphs.

    python benchmarks/faithfulness_threshold.py [--sentences 400]

Supported: a sentence taken from a paragraph, scored against that paragraph plus four paragraphs
of other articles (as if five passages were retrieved). Unsupported: the same sentence scored
against five paragraphs of other articles only. Prints the accuracy per threshold and the best.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from rag_core.embedding import EmbeddingModel  # noqa: E402
from serve_app.faithfulness import answer_sentences, supported_share  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--qa", type=Path, default=REPO_ROOT.parent / "shared/data/qa/squad2_dev_cs224n")
    parser.add_argument("--sentences", type=int, default=400)
    args = parser.parse_args()
    contexts = [json.loads(line) for line in (args.qa / "contexts.jsonl").open()]
    rng = random.Random(0)
    model = EmbeddingModel.from_setting("auto", device="cpu")
    vectors = model.embed_queries([c["text"] for c in contexts])
    picks = []
    for index in rng.sample(range(len(contexts)), args.sentences):
        sentences = answer_sentences(contexts[index]["text"])
        if sentences:
            others = [j for j in rng.sample(range(len(contexts)), 12) if contexts[j]["title"] != contexts[index]["title"]][:5]
            picks.append((rng.choice(sentences), index, others))
    sentence_vectors = model.embed_queries([s for s, _, _ in picks])
    print(f"model {model.spec.name}, {len(picks)} sentences")
    print("| threshold | supported judged supported | unsupported judged unsupported | accuracy |")
    print("|---|---|---|---|")
    best = (0.0, 0.0)
    for threshold in np.arange(0.3, 0.81, 0.05):
        tp = sum(supported_share([v], vectors[[i] + o[:4]], threshold) == 1.0 for v, (_, i, o) in zip(sentence_vectors, picks))
        tn = sum(supported_share([v], vectors[o], threshold) == 0.0 for v, (_, i, o) in zip(sentence_vectors, picks))
        accuracy = (tp + tn) / (2 * len(picks))
        best = max(best, (accuracy, round(float(threshold), 2)))
        print(f"| {threshold:.2f} | {tp / len(picks):.1%} | {tn / len(picks):.1%} | {accuracy:.1%} |")
    print(f"best threshold {best[1]} (accuracy {best[0]:.1%})")


if __name__ == "__main__":
    main()
