"""Tests for fedrec.server.summary: what metrics.json says about a run."""

from __future__ import annotations

from fedrec.server.summary import summarize_rounds


def _eval(val_hr: float, hr: float) -> dict[str, float]:
    return {"users": 50.0, "val-hr@10": val_hr, "hr@10": hr, "ndcg@10": hr / 2,
            "full_hr@10": hr / 3, "full_ndcg@10": hr / 4}  # fmt: skip


def test_summarize_rounds_picks_the_best_validation_round() -> None:
    records = [
        {"round": 0, "clients_sampled": 0, "bytes_down_per_client": 0, "eval": _eval(0.1, 0.1)},
        {"round": 1, "clients_sampled": 4, "clients_replied": 4, "bytes_down_per_client": 1000,
         "bytes_up_per_client": 900.0},
        {"round": 2, "clients_sampled": 4, "clients_replied": 3, "bytes_down_per_client": 1000,
         "bytes_up_per_client": 1100.0, "eval": _eval(0.6, 0.3)},
        {"round": 3, "clients_sampled": 4, "clients_replied": 0, "bytes_down_per_client": 1000,
         "bytes_up_per_client": 0.0, "eval": {"users": 0.0}},  # no evaluated user this time
        {"round": 4, "clients_sampled": 2, "clients_replied": 2, "bytes_down_per_client": 1000,
         "bytes_up_per_client": 1000.0, "eval": _eval(0.4, 0.9)},  # best test, worse val
    ]  # fmt: skip
    summary = summarize_rounds(records)
    assert summary["best_round"] == 2
    best = _eval(0.6, 0.3)
    assert summary["final"] == {k: best[k] for k in ("hr@10", "ndcg@10", "full_hr@10",
                                                     "full_ndcg@10", "users")}  # fmt: skip
    assert summary["final_split"] == "test" and "val-hr@10" in summary["selection"]
    assert summary["last"] == _eval(0.4, 0.9)
    assert summary["rounds"] is records
    # round 0 sent nothing and round 3 got no reply: neither counts in the means
    assert summary["bytes_per_client_round"] == {"down": 1000.0, "up": 1000.0}


def test_summarize_rounds_prefers_the_later_round_on_ties() -> None:
    records = [{"round": r, "eval": _eval(0.5, r / 10)} for r in (1, 2, 3)]
    assert summarize_rounds(records)["best_round"] == 3


def test_summarize_rounds_without_evaluation() -> None:
    record = {"round": 1, "clients_sampled": 2, "clients_replied": 2,
              "bytes_down_per_client": 10, "bytes_up_per_client": 20.0}  # fmt: skip
    summary = summarize_rounds([record])
    assert summary["best_round"] is None and summary["final"] == {} and summary["last"] == {}
    assert summary["bytes_per_client_round"] == {"down": 10.0, "up": 20.0}
    empty = summarize_rounds([])
    assert empty["best_round"] is None
    assert empty["bytes_per_client_round"] == {"down": 0.0, "up": 0.0}
