"""Federated evaluation: the model goes to an evaluation panel, the devices rank their own
held-out items and reply with rates; the server averages the rates of the users evaluated.

Every ``eval-every`` rounds (and after a run's last round, and at round 0 of a fresh run:
the baseline) the round's model is sent to the panel (``server/cohorts.py``:
``EvaluationPanel``, the same users every time) in the channel's download form. Each reply
is checked (``server/validation.py``); the round's metrics are the evaluated users' mean of
each rate (:func:`aggregate_user_metrics`), so a user that cannot be evaluated counts as
nothing, not as a zero.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedrec.common import keys
from fedrec.common.channel import Channel
from fedrec.common.records import (
    array_record,
    describe_received,
    integer,
    message_bytes,
    metrics_of,
    scalar,
)
from fedrec.server.cohorts import EvaluationPanel
from fedrec.server.validation import Refusal, ReplyValidator

__all__ = ["FederatedEvaluation", "aggregate_user_metrics", "model_record"]


def aggregate_user_metrics(records: Sequence[Mapping[str, object]]) -> dict[str, float | int]:
    """Mean of each evaluation metric over the evaluated users that report it (weight
    ``users``: 1 or 0 per client), so a user that cannot be evaluated counts as nothing, not
    as a zero (and one that has seen every target item adds nothing to the exposure)."""
    totals: dict[str, float] = {}
    counts: dict[str, int] = {}
    users = 0
    for metrics in records:
        n = integer(metrics, keys.USERS, 0)
        users += n
        for k in metrics:
            if k not in (keys.USERS, keys.NUM_EXAMPLES, keys.UNIT_WEIGHT) and n:
                totals[k] = totals.get(k, 0.0) + scalar(metrics, k) * n
                counts[k] = counts.get(k, 0) + n
    means = {k: v / counts[k] for k, v in totals.items()}
    return {keys.USERS: users, **means}


def model_record(model: Mapping[str, np.ndarray], channel: Channel) -> ArrayRecord:
    """The model as messages carry it: in the channel's download form when anything in
    the exchange is encoded, else the float32 arrays as they are."""
    if channel.compressed or channel.low_rank is not None:
        model = channel.encode_model(model)
    return array_record(model)


@dataclass
class FederatedEvaluation:
    """Who is evaluated, when, and how a reply is checked."""

    panel: EvaluationPanel
    validator: ReplyValidator
    every: int  # evaluate when the absolute round is a multiple (and after the last)
    last_round: int  # the run's last round: always evaluated

    def due(self, server_round: int) -> bool:
        return server_round % self.every == 0 or server_round == self.last_round

    def run(
        self,
        grid: Grid,
        server_round: int,
        model: ArrayRecord,
        config: Mapping[str, Any],
        timeout: float,
    ) -> dict[str, Any]:
        """Evaluate ``model`` (as messages carry it) on the panel; the round record's
        evaluation fields (``eval``, ``clients_evaluated``, bytes, refusals, received)."""
        cohort = self.panel.sample(list(grid.get_node_ids()))  # whoever is connected
        content = RecordDict(
            {
                keys.ARRAYS: model,
                keys.CONFIG: ConfigRecord({**config, keys.SERVER_ROUND: server_round}),
            }
        )
        messages = [Message(content, node, MessageType.EVALUATE) for node in cohort]
        replies = list(grid.send_and_receive(messages, timeout=timeout)) if messages else []
        ok = [m for m in replies if not m.has_error()]
        accepted: list[Message] = []
        refused: list[Refusal] = []
        for reply in ok:
            refusal = self.validator.evaluate(reply)
            if refusal is None:
                accepted.append(reply)
            else:
                refused.append(refusal)
        # the evaluation fan-out: the model goes to every evaluated node (each message once)
        record: dict[str, Any] = {
            "eval_bytes_down_total": sum(message_bytes(m) for m in messages),
            "eval_bytes_up_total": sum(message_bytes(m) for m in ok),
            "eval_unanswered": len(messages) - len(replies),
        }
        if accepted:
            means = aggregate_user_metrics([metrics_of(m.content) for m in accepted])
            record["eval"] = {k: float(v) for k, v in means.items()}
            record["clients_evaluated"] = len(accepted)
        if refused:
            counts: dict[str, int] = {}
            for r in refused:
                counts[r.reason] = counts.get(r.reason, 0) + 1
            record["rejected"] = counts
            record["eval_errors"] = [f"refused: {r}" for r in refused[:3]]
        if replies:
            evaluated: dict[str, dict[str, object]] = {}
            describe_received(replies, evaluated)
            record["received"] = evaluated
        return record
