"""The round driver: who takes part, which rounds evaluate, and the record of every round.

:class:`RoundRecorder` is the outermost strategy of every run (``server/factory.py``). It wraps
the aggregation stack (the server optimizer, with DP-FedAvg around it when user-level DP is
on) and adds, without touching the aggregation math:
  * the cohort of each round, from its :class:`~fedrec.server.cohorts.CohortSampler` (an
    exact count, a fraction, or DP-FedAvg's Poisson sample), drawn from the nodes connected
    when the round starts (at least ``min-clients``, else it waits up to the round timeout);
  * evaluation every ``eval-every`` rounds and after the last, of every connected node or of
    a fixed panel of ``eval-clients`` of them (``EvaluationPanel``: drawn once, asked at
    every evaluation);
  * a record per round: clients sampled/replied/failed, train loss, bytes down and up per
    client and in all (the evaluation fan-out's too: ``eval_bytes_down_total``, the model
    sent to every evaluated node, and ``eval_bytes_up_total``), the server step size, round
    seconds, evaluation metrics, the privacy ledgers and the secure-aggregation report;
    streamed to ``rounds.jsonl`` and to ``on_round``;
  * a checkpoint after every round (``server/checkpoint.py``);
  * absolute round numbers for everything it wraps, so a resumed run continues its schedule
    and FedAdam's bias correction instead of restarting them.
Evaluation metrics are aggregated as means over evaluated users (each holds one held-out
item), so a user that cannot be evaluated counts as nothing, not as a zero.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedrec.common import keys
from fedrec.common.records import describe_received, message_bytes, scalar
from fedrec.common.runs import STOP_REQUESTED, RunInterrupted, append_round
from fedrec.common.secagg.grid import SecureAggregationGrid, secure_sum
from fedrec.server.cohorts import CohortGrid, CohortSampler, connected_nodes, in_cohort_order
from fedrec.server.dp_fedavg import DPFedAvg, RecordLevelTally
from fedrec.server.exchange import Exchange
from fedrec.server.optimizer import ServerStep
from fedrec.server.robust import BOUNDED_ROWS, BOUNDED_UPDATES
from fedrec.server.validation import Refusal, ReplyValidator
from fedrec.server.wrapper import StrategyWrapper

__all__ = ["RoundPlan", "RoundRecorder"]

RoundCallback = Callable[[dict[str, Any]], None]
Checkpoint = Callable[[ArrayRecord, int], None]


@dataclass(frozen=True)
class RoundPlan:
    """Which rounds run and when they evaluate."""

    num_rounds: int  # rounds this run executes (fewer than num-rounds when resuming)
    eval_every: int  # evaluate when the absolute round is a multiple (and after the last)
    round_offset: int = 0  # the checkpoint's round: round r of this run is r + offset
    min_clients: int = 1  # a train round starts once this many nodes are connected
    timeout: float = 600.0  # seconds a round, and the wait for nodes before it, may take


class RoundRecorder(StrategyWrapper[Strategy]):
    """Drives and records the rounds of ``inner`` (see the module docstring)."""

    def __init__(
        self,
        inner: Strategy,
        *,
        plan: RoundPlan,
        step: ServerStep,
        train_cohorts: CohortSampler,
        eval_cohorts: CohortSampler,
        run_dir: Path | None = None,
        on_round: RoundCallback | None = None,
        checkpoint: Checkpoint | None = None,
        user_dp: DPFedAvg | None = None,
        record_tally: RecordLevelTally | None = None,
        secure: SecureAggregationGrid | None = None,
        validator: ReplyValidator | None = None,
        exchange: Exchange | None = None,
    ) -> None:
        """``step`` is the server optimizer inside ``inner`` (its step size is recorded);
        ``user_dp`` the DP-FedAvg layer, ``secure`` the SecAgg+ grid, when the run has them;
        ``validator`` refuses malformed replies before anything aggregates them;
        ``exchange`` compresses the models sent and decodes the updates received."""
        super().__init__(inner)
        self.plan = plan
        self.step = step
        self.train_cohorts = train_cohorts
        self.eval_cohorts = eval_cohorts
        self.run_dir = run_dir
        self.on_round = on_round
        self.checkpoint = checkpoint
        self.user_dp = user_dp
        self.record_tally = record_tally
        self.secure = secure
        self.validator = validator
        self.exchange = exchange
        self._global: dict[str, np.ndarray] | None = None
        self.records: list[dict[str, Any]] = []
        self._current: dict[str, Any] = {}
        self._t0 = 0.0

    # --- training -----------------------------------------------------------------------
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._t0 = time.perf_counter()
        absolute = server_round + self.plan.round_offset
        if STOP_REQUESTED.is_set():
            raise RunInterrupted(absolute - 1)
        nodes = connected_nodes(
            grid, self.plan.min_clients, self.plan.timeout, what=f"round {absolute}"
        )
        cohort = self.train_cohorts.sample(nodes)
        if self.validator is not None or self.exchange is not None:  # the round's exact model:
            # each update is measured against it, and a compressed Δ is added to it
            self._global = {k: v.numpy().astype(np.float64) for k, v in arrays.items()}
        messages = in_cohort_order(
            self.inner.configure_train(absolute, arrays, config, CohortGrid(grid, cohort)), cohort
        )
        if self.exchange is not None:
            self.exchange.encode_messages(messages, arrays)
            self.exchange.start_round(messages, absolute)
        self._current = {
            "round": absolute,
            "clients_sampled": len(messages),
            "bytes_down_per_client": message_bytes(messages[0]) if messages else 0,
        }
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        absolute = server_round + self.plan.round_offset
        replies = list(replies)
        forged = 0
        if self.secure is None:  # only the secure grid builds aggregate replies
            forged = sum(secure_sum(m)[1] for m in replies)
            replies = [m for m in replies if not secure_sum(m)[1]]
        ok = [m for m in replies if not m.has_error()]
        ups = [message_bytes(m) for m in ok]
        received: dict[str, dict[str, object]] = {}
        describe_received(ok, received)  # everything received, refused or not
        self._stop_if_refused(absolute, replies)  # before DP-FedAvg would spend ε on it
        decoded, undecodable = self._decoded(ok)
        accepted, refused = self._validated(decoded, self._global)
        refused = undecodable + refused
        failed = [m for m in replies if m.has_error()]
        arrays, metrics = self.inner.aggregate_train(absolute, failed + accepted)
        if arrays is None and replies and not ok:  # (under DP: a noise-only round instead)
            reason = (replies[0].error.reason or "")[-2000:]
            raise RuntimeError(
                f"round {absolute}: all {len(replies)} clients failed; first error: {reason}"
            )
        rec = self._current
        if self.step.last_step_size is not None:
            rec["server_lr"] = self.step.last_step_size
        rec.update(
            clients_replied=len(accepted),
            clients_failed=len(replies) - len(accepted),
            errors=(
                sorted({(m.error.reason or "")[-300:] for m in failed})
                + [f"refused: {r}" for r in refused[:1]]
            )[:3],
            bytes_up_per_client=float(np.mean(ups)) if ups else 0.0,
            bytes_up_total=int(sum(ups)),
            bytes_down_total=rec["bytes_down_per_client"] * rec["clients_sampled"],
            train_loss=scalar(metrics, keys.TRAIN_LOSS) if metrics else None,
            returning=scalar(metrics, keys.RETURNING, 0.0) if metrics else None,
            train_seconds=time.perf_counter() - self._t0,
        )
        if metrics is not None and BOUNDED_UPDATES in metrics:  # NormBounding clipped these
            rec["bounded"] = {
                "updates": int(scalar(metrics, BOUNDED_UPDATES)),
                "rows": int(scalar(metrics, BOUNDED_ROWS)),
            }
        rec["received"] = {"train": received}
        if refused:
            rec["rejected"] = {"train": _count_reasons(refused)}
        if forged:
            rec["clients_failed"] += forged
            rec["errors"] = [*rec["errors"], f"{forged} forged aggregate replies dropped"][:3]
        if self.secure is not None:  # the four stages' traffic, not the one aggregate
            self._record_secure_round(rec)
            if refused:  # the unmasked sum itself was refused: the round changed nothing
                rec["clients_replied"], rec["clients_failed"] = 0, rec["clients_sampled"]
        privacy = self._privacy_record(accepted)
        if privacy:
            rec["privacy"] = privacy
        if arrays is not None and self.checkpoint is not None:
            self.checkpoint(arrays, absolute)
        return arrays, metrics

    def _decoded(self, replies: list[Message]) -> tuple[list[Message], list[Refusal]]:
        """(decoded, refusals): compressed updates made whole, ``global + Δ`` (all of them
        as they are without an exchange)."""
        if self.exchange is None or self._global is None:
            return replies, []
        global_, exchange = self._global, self.exchange
        return _sift(replies, lambda msg: exchange.decode(msg, global_))

    def _validated(
        self, replies: list[Message], global_: dict[str, np.ndarray] | None
    ) -> tuple[list[Message], list[Refusal]]:
        """(accepted, refusals) of replies without an error (all accepted without a validator)."""
        if self.validator is None:
            return replies, []
        validator = self.validator
        return _sift(replies, lambda msg: validator.check(msg, global_))

    def _stop_if_refused(self, absolute: int, replies: list[Message]) -> None:
        """Every device refused the round (its catalog differs, its guard or secure
        aggregation refused): a setting, not bad luck. Stop before a round is spent on it."""
        refusals = [m for m in replies if m.has_error() and m.error.code in keys.SETTING_ERRORS]
        if replies and len(refusals) == len(replies):
            reason = (refusals[0].error.reason or "")[-2000:]
            raise RuntimeError(
                f"round {absolute}: every one of the {len(replies)} clients refused the round;"
                f" first refusal: {reason}"
            )
        report = self.secure.report if self.secure is not None else {}
        if report.get("all_failed"):
            raise RuntimeError(
                f"round {absolute}: every client refused the secure round at stage"
                f" {report['all_failed']}; first error: {(report['errors'] or [''])[0]}"
            )

    def _record_secure_round(self, rec: dict[str, Any]) -> None:
        assert self.secure is not None
        report = self.secure.report
        n = max(report["clients"], 1)
        rec.update(
            clients_replied=report["survivors"],
            clients_failed=report["clients"] - report["survivors"],
            bytes_down_per_client=report["bytes_down"] / n,
            bytes_up_per_client=report["bytes_up"] / n,
            bytes_down_total=report["bytes_down"],
            bytes_up_total=report["bytes_up"],
            errors=report["errors"],
            secagg={k: v for k, v in report.items() if k != "received"},
            received=report["received"],  # the four stages' replies, not the sum it unmasked
        )

    def _privacy_record(self, ok: list[Message]) -> dict[str, Any]:
        """This round's ``privacy`` entry: the user-level ledger (DP-FedAvg) and the devices'
        record-level ε (if they report one)."""
        privacy: dict[str, Any] = {}
        if self.user_dp is not None and self.user_dp.last_record:
            privacy["user_level"] = dict(self.user_dp.last_record)
        if self.record_tally is not None:
            declined = self.record_tally.update(ok)
            if self.record_tally.latest or declined or self.record_tally.secure_mean is not None:
                privacy["record_level"] = self.record_tally.summary(declined)
        return privacy

    # --- evaluation ---------------------------------------------------------------------
    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        absolute = server_round + self.plan.round_offset
        if absolute % self.plan.eval_every != 0 and server_round != self.plan.num_rounds:
            return []
        cohort = self.eval_cohorts.sample(list(grid.get_node_ids()))  # whoever is connected
        messages = self.inner.configure_evaluate(absolute, arrays, config, CohortGrid(grid, cohort))
        ordered = in_cohort_order(messages, cohort)
        if self.exchange is not None:
            self.exchange.encode_messages(ordered, arrays)
        # the evaluation fan-out: the model goes to every evaluated node (each message once)
        self._current["eval_bytes_down_total"] = sum(message_bytes(m) for m in ordered)
        return ordered

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        replies = list(replies)
        ok = [m for m in replies if not m.has_error()]
        accepted, refused = self._validated(ok, None)
        failed = [m for m in replies if m.has_error()]
        metrics = self.inner.aggregate_evaluate(
            server_round + self.plan.round_offset, failed + accepted
        )
        rec = self._current
        rec["eval_bytes_up_total"] = sum(message_bytes(m) for m in ok)
        if metrics is not None:
            rec["eval"] = {k: scalar(metrics, k) for k in metrics}
            rec["clients_evaluated"] = len(accepted)
        if refused:
            rec.setdefault("rejected", {})["evaluate"] = _count_reasons(refused)
            rec["eval_errors"] = [f"refused: {r}" for r in refused[:3]]
        if replies:
            evaluated: dict[str, dict[str, object]] = {}
            describe_received(replies, evaluated)
            rec.setdefault("received", {})["evaluate"] = evaluated
        rec["round_seconds"] = time.perf_counter() - self._t0
        self.records.append(dict(rec))
        if self.run_dir is not None:  # streamed, so a long run can be watched (tail -f)
            append_round(self.run_dir, rec)
        if self.on_round:
            self.on_round(dict(rec))
        return metrics

    def evaluate_initial(
        self, grid: Grid, arrays: ArrayRecord, config: ConfigRecord, timeout: float
    ) -> None:
        """Federated evaluation of the initial model, recorded as round 0 (the baseline)."""
        self._t0 = time.perf_counter()
        self._current = {
            "round": self.plan.round_offset,
            "clients_sampled": 0,
            "bytes_down_per_client": 0,
        }
        messages = self.configure_evaluate(0, arrays, config, grid)
        replies = grid.send_and_receive(messages=messages, timeout=timeout)
        self.aggregate_evaluate(0, replies)


def _sift(
    replies: list[Message], check: Callable[[Message], Refusal | None]
) -> tuple[list[Message], list[Refusal]]:
    """(the replies ``check`` passes, the refusals of the others), in order."""
    passed, refused = [], []
    for msg in replies:
        refusal = check(msg)
        if refusal is None:
            passed.append(msg)
        else:
            refused.append(refusal)
    return passed, refused


def _count_reasons(refused: list[Refusal]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in refused:
        counts[r.reason] = counts.get(r.reason, 0) + 1
    return counts
