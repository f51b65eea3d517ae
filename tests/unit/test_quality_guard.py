"""The retrieval-quality guard's verdict (benchmarks/quality_guard.py): quality lost beyond the
tolerance fails the run, a slower p50 is reported without failing it."""

from benchmarks.quality_guard import compare

BASELINE = {
    "scifact": {"queries": 300, "chunks": 20213, "ndcg@10": 71.73, "recall@10": 83.64, "p50_ms": 40.0},
    "squad": {"queries": 2910, "chunks": 700, "hit@1": 60.0, "hit@5": 85.0, "p50_ms": 30.0},
}


def test_figures_within_the_tolerance_pass() -> None:
    current = {
        "scifact": {"queries": 300, "chunks": 20000, "ndcg@10": 71.30, "recall@10": 84.0, "p50_ms": 43.9},
        "squad": {"queries": 2910, "chunks": 700, "hit@1": 59.6, "hit@5": 85.0, "p50_ms": 30.0},
    }
    assert compare(current, BASELINE, 0.5) == []


def test_a_metric_lost_beyond_the_tolerance_is_a_regression_and_a_slower_p50_is_reported() -> None:
    current = {
        "scifact": {"queries": 300, "chunks": 20213, "ndcg@10": 71.1, "recall@10": 83.64, "p50_ms": 44.5},
        "squad": {"queries": 2910, "chunks": 700, "hit@1": 60.0, "hit@5": 84.4, "p50_ms": 30.0},
    }
    problems = compare(current, BASELINE, 0.5)
    assert problems == [
        "REGRESSION scifact ndcg@10: 71.1 < baseline 71.73 - 0.5",
        "SLOWER scifact p50: 44.5 ms > 1.10 x baseline 40.0 ms",
        "REGRESSION squad hit@5: 84.4 < baseline 85.0 - 0.5",
    ]


def test_a_dataset_without_a_baseline_is_named() -> None:
    problems = compare({"nfcorpus": {"queries": 323, "chunks": 1, "ndcg@10": 34.6, "recall@10": 16.8, "p50_ms": 30.0}}, BASELINE, 0.5)
    assert problems == ["NO BASELINE for nfcorpus: run with --write-baseline to record one"]
