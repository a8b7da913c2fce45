"""Plain aggregation: the round's replies, each decoded and checked, summed in the clear.

For every training round without secure aggregation this sends the round's messages and,
for each reply without an error, in this order:

1. **decode** it through the round's channel (``common/channel.py``): the float32 weights
   a device sent, or the server's own model plus the update it sent in the upload's form
   (a payload off its layout is refused, reason ``payload``);
2. **validate** it (``server/validation.py``): records, names, shapes, finite values, the
   update's norm, the metrics' keys and ranges — a refused reply counts as failed;
3. **bound** it (``norm-bound`` / ``row-norm-bound``, ``server/robust.py``): the update is
   clipped, and the reply's model becomes the float32 model the clipped update makes;
4. **sum** Δ_i = model_i − start into an :class:`~fedrec.server.aggregate.Aggregate`,
   clipped first to C when the run has user-level DP (the server's re-clip: a device that
   skips its own clip cannot raise the sensitivity).

It returns the aggregate and a :class:`~fedrec.server.aggregate.TrainReport` (sizes,
failures, refusals by reason, what was received: names and shapes, never values). When every
reply is a device's refusal of the round itself (another catalog, a guard, a form it cannot
take), the report says so: a setting, not bad luck, and the round loop stops the run.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from flwr.app import Message
from flwr.serverapp import Grid

from fedrec.common import keys
from fedrec.common.privacy import clip_delta
from fedrec.common.records import (
    describe_received,
    message_bytes,
    metrics_of,
    numpy_arrays,
    scalar,
)
from fedrec.server.aggregate import Aggregate, TrainReport, TrainRound, fedavg_mean, weighted_means
from fedrec.server.robust import Bounds, bound
from fedrec.server.validation import ARRAY_ERRORS, Refusal, ReplyValidator

__all__ = ["CLIP_TOLERANCE", "PlainAggregation"]

# relative: a reply within C·(1 + tol) counts as clipped by its client (it arrives as
# float32 values global + Δ, so the server's float64 recomputation of ‖Δ‖ is off by ~1e-7)
CLIP_TOLERANCE = 1e-4


class PlainAggregation:
    """Sends a round's train messages and sums the replies that pass (module docstring).

    ``weight_key``: the metric each reply is weighed by (``num-examples``, or
    ``unit-weight`` for uniform); ``bounds``: norm bounding of each update;
    ``clip_norm``: the server's DP re-clip C (user-level DP only).
    """

    def __init__(
        self,
        validator: ReplyValidator,
        *,
        weight_key: str,
        bounds: Bounds | None = None,
        clip_norm: float | None = None,
    ) -> None:
        self.validator = validator
        self.weight_key = weight_key
        self.bounds = bounds if bounds else None
        self.clip_norm = clip_norm

    def __repr__(self) -> str:
        if self.bounds is None:
            return "PlainAggregation"
        b = self.bounds
        return f"PlainAggregation(norm-bound={b.norm:g}, row-norm-bound={b.row_norm:g})"

    def aggregate(self, grid: Grid, round_: TrainRound) -> tuple[Aggregate | None, TrainReport]:
        messages = list(round_.messages)
        per_client = message_bytes(messages[0]) if messages else 0
        report = TrainReport(
            sampled=len(messages),
            bytes_down_per_client=per_client,
            bytes_down=per_client * len(messages),
        )
        replies = list(grid.send_and_receive(messages, timeout=round_.timeout))
        report.unanswered = len(messages) - len(replies)
        ok = [m for m in replies if not m.has_error()]
        failed = [m for m in replies if m.has_error()]
        ups = [message_bytes(m) for m in ok]
        report.bytes_up = int(sum(ups))
        report.bytes_up_per_client = float(np.mean(ups)) if ups else 0.0
        describe_received(ok, report.received)  # everything received, refused or not
        report.all_refused = _refusal_of_the_round(replies)
        if replies and not ok:
            reason = (replies[0].error.reason or "")[-2000:]
            report.all_failed = f"all {len(replies)} clients failed; first error: {reason}"
        models: list[dict[str, np.ndarray]] = []
        metrics: list[Mapping[str, object]] = []
        refused: list[Refusal] = []
        for reply in ok:
            accepted = self._accepted(reply, round_)
            if isinstance(accepted, Refusal):
                refused.append(accepted)
                continue
            models.append(accepted)
            metrics.append(dict(metrics_of(reply.content)))
            report.node_metrics.append((reply.metadata.src_node_id, metrics[-1]))
        if self.bounds is not None:
            models, report.bounded = self._bounded(models, round_.start)
        report.contributed = len(models)
        report.failed = len(replies) - len(models)
        report.errors = sorted({(m.error.reason or "")[-300:] for m in failed}) + [
            f"refused: {r}" for r in refused[:1]
        ]
        for r in refused:
            report.rejected[r.reason] = report.rejected.get(r.reason, 0) + 1
        if not models:
            return None, report
        aggregate, report.clipped = self._sum(models, metrics, round_.start)
        return aggregate, report

    def _accepted(self, reply: Message, round_: TrainRound) -> dict[str, np.ndarray] | Refusal:
        """The float32 model a reply makes (decoded through the round's channel, then
        validated), or why it is refused."""
        refusal = self.validator.records(reply)
        if refusal is not None:
            return refusal
        record = reply.content.array_records[keys.ARRAYS]
        try:  # the bytes are the device's: a header or a length that lies is a refusal
            payload = numpy_arrays(record)
        except ARRAY_ERRORS as err:
            return Refusal("arrays", f"undecodable array bytes: {type(err).__name__}: {err}")
        if round_.channel.sends_updates:
            try:  # PayloadError is a ValueError: the layout, and the values themselves
                model = round_.channel.decode_update(payload, round_.start)
            except ARRAY_ERRORS as err:
                return Refusal("payload", f"{type(err).__name__}: {err}")
        else:
            model = payload
        refusal = self.validator.train(model, metrics_of(reply.content), round_.start)
        return model if refusal is None else refusal

    def _bounded(
        self, models: list[dict[str, np.ndarray]], start: Mapping[str, np.ndarray]
    ) -> tuple[list[dict[str, np.ndarray]], dict[str, int]]:
        """Each model's update clipped to the bounds (a model within them is kept as it is,
        bit for bit); and how many updates and rows were clipped."""
        assert self.bounds is not None
        out, updates, rows = [], 0, 0
        for model in models:
            delta, _ = clip_delta(start, model, None)
            bounded, whole, clipped_rows = bound(delta, self.bounds)
            updates, rows = updates + whole, rows + clipped_rows
            if whole or clipped_rows:
                model = {k: (start[k] + bounded[k]).astype(np.float32) for k in delta}
            out.append(model)
        return out, {"updates": updates, "rows": rows}

    def _sum(
        self,
        models: list[dict[str, np.ndarray]],
        metrics: list[Mapping[str, object]],
        start: Mapping[str, np.ndarray],
    ) -> tuple[Aggregate, int]:
        """The aggregate of the accepted models, and how many updates the DP clip shortened."""
        weights = [scalar(m, self.weight_key) for m in metrics]  # validated numbers
        total = {k: np.zeros_like(v) for k, v in start.items()}
        clipped = 0
        for model, weight in zip(models, weights, strict=True):
            update, norm = clip_delta(start, model, self.clip_norm)
            if self.clip_norm is not None:
                clipped += norm > self.clip_norm * (1 + CLIP_TOLERANCE)
            for k in total:
                total[k] += update[k] * weight
        weight = sum(weights)
        if self.clip_norm is None:  # FedAvg's own average of the float32 models
            mean = fedavg_mean(models, weights)
        else:
            mean = {k: start[k] + total[k] / weight for k in start}
        means = weighted_means(metrics, self.weight_key)
        return Aggregate(start, total, weight, len(models), means, mean), clipped


def _refusal_of_the_round(replies: list[Message]) -> str | None:
    """Every device refused the round (its catalog differs, its guard or its channel
    refused): the first refusal; ``None`` otherwise."""
    refusals = [m for m in replies if m.has_error() and m.error.code in keys.SETTING_ERRORS]
    if replies and len(refusals) == len(replies):
        reason = (refusals[0].error.reason or "")[-2000:]
        return f"every one of the {len(replies)} clients refused the round; first refusal: {reason}"
    return None
