"""A run's rounds, top to bottom: the one loop of the server.

Each round (:meth:`Rounds.round`) is, in this order:

1. **cohort** — wait for ``min-clients`` connected nodes, sample the round's cohort
   (uniform, a fraction, or DP-FedAvg's Poisson sample: ``server/cohorts.py``);
2. **send** — one train message per cohort node: the model in the round's channel form
   (``common/channel.py``: compression, a low-rank basis) and the round's config (the
   catalog hash, FedProx's μ, DP-FedAvg's C and ε);
3. **decode → validate → aggregate** — the aggregator (``server/plain.py``, or SecAgg+:
   ``server/secagg.py``) collects the replies and returns one
   :class:`~fedrec.server.aggregate.Aggregate` and a report of the traffic; a round every
   device refuses stops the run (a setting, not bad luck);
4. **DP** — DP-FedAvg noises the aggregate's sum over its fixed m and counts the round in
   its ledger (``server/dp_fedavg.py``); without it the aggregate's mean goes on as it is;
5. **server step** — the server optimizer steps to that mean (``server/optimizer.py``);
6. **checkpoint** — the model, the optimizer's state and the ledger, before the model
   leaves the server again (``server/checkpoint.py``);
7. **evaluate** — every ``eval-every`` rounds and after the last (``server/evaluation.py``);
8. **record** — the round's entry, from what each step returned (``server/recorder.py``).

Every layer returns what it did; nothing is read back from one afterwards. Ctrl-C between
rounds (``STOP_REQUESTED``) ends the run with its last checkpoint.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedrec.common import keys
from fedrec.common.channel import Channel
from fedrec.common.stop import STOP_REQUESTED, RunInterrupted
from fedrec.server.aggregate import Aggregate, Aggregator, TrainReport, TrainRound
from fedrec.server.checkpoint import Checkpointer
from fedrec.server.cohorts import CohortSampler, connected_nodes
from fedrec.server.dp_fedavg import DPFedAvg, RecordLevelTally
from fedrec.server.evaluation import FederatedEvaluation, model_record
from fedrec.server.optimizer import ServerStep
from fedrec.server.recorder import RoundRecorder

__all__ = ["RoundPlan", "Rounds"]

Model = dict[str, np.ndarray]


@dataclass(frozen=True)
class RoundPlan:
    """Which rounds this run executes, and the wait for each."""

    first: int  # absolute round of this run's first round (after a checkpoint's)
    last: int  # absolute round of its last (num-rounds, or the ε budget's last)
    min_clients: int = 1  # a round starts once this many nodes are connected
    timeout: float = 600.0  # seconds a round, and the wait for its nodes, may take


@dataclass
class Rounds:
    """Everything a run's rounds use, composed once (``server/app.py``), run by :meth:`run`."""

    grid: Grid
    plan: RoundPlan
    sampler: CohortSampler
    aggregator: Aggregator
    step: ServerStep
    evaluation: FederatedEvaluation
    recorder: RoundRecorder
    channel_for: Callable[[int], Channel]  # a round's channel (a low rank draws its basis)
    train_config: Mapping[str, Any]  # what every train message's config carries
    evaluate_config: Mapping[str, Any]
    dp: DPFedAvg | None = None
    tally: RecordLevelTally | None = None  # the devices' record-level ε, as they report it
    checkpointer: Checkpointer | None = None

    def run(self, model: Model) -> Model:
        """Round 0's evaluation (a fresh run: the baseline), then every round of the plan;
        the last model."""
        if self.plan.first == 1:
            self.baseline(model)
        for server_round in range(self.plan.first, self.plan.last + 1):
            model = self.round(server_round, model)
        return model

    def baseline(self, model: Model) -> None:
        """Federated evaluation of the initial model, recorded as round 0."""
        started = time.perf_counter()
        entry: dict[str, Any] = {"round": 0, "clients_sampled": 0, "bytes_down_per_client": 0}
        self._evaluate(entry, 0, model, self.channel_for(0))
        entry["round_seconds"] = time.perf_counter() - started
        self.recorder.record(entry)

    def round(self, server_round: int, model: Model) -> Model:
        """One round (see the module docstring); the model it ends with."""
        started = time.perf_counter()
        if STOP_REQUESTED.is_set():
            raise RunInterrupted(server_round - 1)
        # 1. cohort
        plan = self.plan
        what = f"round {server_round}"
        nodes = connected_nodes(self.grid, plan.min_clients, plan.timeout, what=what)
        cohort = self.sampler.sample(nodes)
        # 2. send: the round's messages
        channel = self.channel_for(server_round)
        config = {**self.train_config, **channel.config(train=True)}
        if self.dp is not None:
            config.update(self.dp.round_config(server_round))
        config[keys.SERVER_ROUND] = server_round
        content = RecordDict(
            {keys.ARRAYS: model_record(model, channel), keys.CONFIG: ConfigRecord(config)}
        )
        messages = [Message(content, node, MessageType.TRAIN) for node in cohort]
        start = {k: v.astype(np.float64) for k, v in model.items()}
        # 3. decode → validate → aggregate
        train = TrainRound(server_round, messages, start, channel, plan.timeout)
        aggregate, report = self.aggregator.aggregate(self.grid, train)
        if report.all_refused:
            raise RuntimeError(f"round {server_round}: {report.all_refused}")
        # 4. DP
        privacy: dict[str, Any] = {}
        if self.dp is not None:
            mean, privacy["user_level"] = self.dp.release(
                aggregate, start, channel.noise_subspaces(), clipped=report.clipped
            )
        elif aggregate is not None:
            mean = dict(aggregate.mean)
        elif report.all_failed:
            raise RuntimeError(f"round {server_round}: {report.all_failed}")
        else:
            mean = None  # nothing to aggregate: the model stays
        if self.tally is not None:
            record_level = self.tally.record(report, aggregate)
            if record_level is not None:
                privacy["record_level"] = record_level
        # 5. server step, 6. checkpoint
        step_size = None
        if mean is not None:
            model, step_size = self.step(model, mean, server_round)
            if self.checkpointer is not None:
                self.checkpointer.write(
                    model,
                    server_round,
                    self.step.state_dict(list(model)),
                    self.dp.state() if self.dp is not None else None,
                )
        entry = _train_entry(server_round, report, aggregate, step_size, privacy)
        entry["train_seconds"] = time.perf_counter() - started
        # 7. evaluate
        if self.evaluation.due(server_round):
            self._evaluate(entry, server_round, model, channel)
        # 8. record
        entry["round_seconds"] = time.perf_counter() - started
        self.recorder.record(entry)
        return model

    def _evaluate(
        self, entry: dict[str, Any], server_round: int, model: Model, channel: Channel
    ) -> None:
        config = {**self.evaluate_config, **channel.config(train=False)}
        found = self.evaluation.run(
            self.grid, server_round, model_record(model, channel), config, self.plan.timeout
        )
        if "rejected" in found:
            entry.setdefault("rejected", {})["evaluate"] = found.pop("rejected")
        if "received" in found:
            entry.setdefault("received", {})["evaluate"] = found.pop("received")
        entry.update(found)


def _train_entry(
    server_round: int,
    report: TrainReport,
    aggregate: Aggregate | None,
    step_size: float | None,
    privacy: dict[str, Any],
) -> dict[str, Any]:
    """The round's entry so far: the training fan-out, the contributors' mean loss and
    how many returned, the step size, the privacy ledgers."""
    entry: dict[str, Any] = {"round": server_round}
    if step_size is not None:
        entry["server_lr"] = step_size
    entry.update(report.record())
    metrics = aggregate.metrics if aggregate is not None else {}
    entry["train_loss"] = float(metrics[keys.TRAIN_LOSS]) if keys.TRAIN_LOSS in metrics else None
    entry["returning"] = float(metrics.get(keys.RETURNING, 0.0)) if metrics else None
    if privacy:
        entry["privacy"] = privacy
    return entry
