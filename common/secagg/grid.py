"""SecAgg+ on the Message API: the server runs each training round as four message stages.

Why not Flower's ``SecAggPlusWorkflow`` + ``secaggplus_mod``: in 1.42 the workflow drives a
legacy ``Strategy`` through ``DefaultWorkflow`` (``flwr.server.workflow``) and cannot run under
a Message-API strategy's ``start()``; the mod reads legacy ``FitIns`` parameters and returns
``FitRes``. Our strategies (``server/``), DP-FedAvg and private node state are all on the
Message API, so the protocol runs here, on the objects of :mod:`fedrec.common.secagg.protocol`.

How it composes: :class:`SecureAggregationGrid` wraps the Grid the strategy talks to. When a
strategy sends its ``train`` messages (whoever it sampled: FedAvg's fixed count or DP-FedAvg's
Poisson cohort), the grid runs

    setup (public keys) → share_keys (encrypted Shamir shares, relayed) →
    collect_masked_vectors (the train messages + each client's ciphertexts; clients train and
    reply with q(Δ) + masks mod M) → unmask (shares of seeds / of dropped clients' keys)

and hands the strategy **one** reply: the mean update of the survivors applied to the
global model the devices started from (with ``download-compression``, the decoded model:
``server/exchange.py`` moves the mean update onto the server's exact one), with the securely
summed metrics, marked with a ``secagg-sum`` record giving
the count. Plain FedAvg/FedAdam/… aggregate that one reply as is (uniform weights, so the
mean is FedAvg's average); DP-FedAvg reads the sum back out, adds its noise to the sum and
divides by the fixed m (``server/dp_fedavg.py``). A round whose survivors fall below the
threshold fails closed: nothing is unmasked and the strategy gets no reply (a skipped round,
or a noise-only round under DP). Evaluation messages pass through unchanged.

Parameters (``[tool.flwr.app.config]``): ``secagg-neighbours`` k (0: SecAgg+ with
k = 2⌈log2 n⌉; ≥ n − 1: every pair, the original SecAgg), ``secagg-threshold`` (fraction
of each client's k + 1 shares needed to rebuild its secrets; at least a majority),
``secagg-clip-range`` c and ``secagg-quantization-bits`` b (Q = 2^b: each coordinate of Δ is
clipped to [−c, c] and rounded to one of Q + 1 levels, step 2c/Q; the sum of n is exact to
within n steps, see ``SecAggConfig.max_sum_error``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    Metadata,
    MetricRecord,
    RecordDict,
)
from flwr.common.secure_aggregation.secaggplus_constants import Stage
from flwr.serverapp import Grid

from fedrec.common import keys
from fedrec.common.colr import TABLE, LowRank
from fedrec.common.compression import decompress, model_shapes
from fedrec.common.grids import GridWrapper
from fedrec.common.records import (
    arrays_of,
    config_of,
    describe_received,
    exchange_modes,
    message_bytes,
    numpy_arrays,
)
from fedrec.common.secagg import wire
from fedrec.common.secagg.primitives import MIN_SECURE_CLIENTS, SecAggError, SecAggSettings
from fedrec.common.secagg.protocol import SecAggServer

__all__ = [
    "SUMMED_METRICS",
    "SecureAggregationGrid",
    "secure_sum",
]

# Metrics the devices sum securely, with the bound of each (a device reports 0 for one it
# does not have; a value beyond its bound is clipped to it). Per device a metric is exact to
# 2·bound/Q: 1/64 of an example, 5e-7 of a 0/1 flag at the default Q = 2^22; a compact round
# (upload-compression = int8) has its cohort's Q, 2^11 at 20 clients: 1,024 examples, a loss
# to 1/16, ε to 1.0 (unbiased: the mean over a cohort is finer by √n)
SUMMED_METRICS = {
    keys.TRAIN_LOSS: 64.0,
    keys.NUM_EXAMPLES: 2.0**20,
    keys.RETURNING: 1.0,
    keys.RECORD_EPSILON: 1024.0,
    keys.BUDGET_EXHAUSTED: 1.0,
}


class SecureAggregationGrid(GridWrapper):
    """A Grid that runs every ``train`` fan-out as a SecAgg+ round (see the module docstring).

    ``report`` holds the last secure round's figures: cohort, k, t, survivors, dropouts per
    stage, bytes down/up per client (all four stages), seconds per stage, status.
    """

    def __init__(
        self,
        grid: Grid,
        settings: SecAggSettings,
        metric_bounds: Mapping[str, float] | None = None,
        rng: np.random.Generator | None = None,
    ) -> None:
        super().__init__(grid)
        self.settings = settings
        self.metric_bounds = dict(SUMMED_METRICS if metric_bounds is None else metric_bounds)
        self._rng = rng if rng is not None else np.random.default_rng()  # the graph
        self.report: dict[str, Any] = {}

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        messages = list(messages)
        if not messages:  # e.g. an empty Poisson cohort: no secure round, no stale report
            self.report = _new_report(0, "skipped: no clients sampled")
            return []
        if messages[0].metadata.message_type != MessageType.TRAIN:
            return self.grid.send_and_receive(messages, timeout=timeout)
        return self._secure_round(messages, timeout)

    # --- one secure round ---------------------------------------------------------------
    def _secure_round(self, messages: list[Message], timeout: float | None) -> list[Message]:
        deadline = None if timeout is None else time.time() + timeout
        train = {m.metadata.dst_node_id: m for m in messages}
        n = len(train)
        report = self.report = _new_report(n, "ok")
        if n < MIN_SECURE_CLIENTS:
            report["status"] = (
                f"skipped: {n} clients sampled, a secure sum needs {MIN_SECURE_CLIENTS}"
            )
            return []
        config = self.settings.for_round(n)
        report.update(neighbours=config.neighbours, threshold=config.threshold)
        report["modulus_bits"] = config.modulus.bit_length() - 1
        first = numpy_arrays(arrays_of(messages[0].content))
        down, _ = exchange_modes(config_of(messages[0].content))
        sent = decompress(first, down, model_shapes(first, down))  # what the devices start from
        global_ = {k: v.astype(np.float64) for k, v in sent.items()}
        low_rank = LowRank.of(config_of(messages[0].content))  # the table's Δ as a factor
        summed = {k: v.shape for k, v in global_.items()}
        summed = low_rank.shapes(summed) if low_rank is not None else summed
        shapes = [*summed.values(), (len(self.metric_bounds),)]
        server = SecAggServer(config, sorted(train), shapes, self._rng)

        def record(stage: str) -> ConfigRecord:
            return wire.config_record(stage, config, self.metric_bounds)

        def exchange(stage: str, contents: Mapping[int, RecordDict]) -> dict[int, ConfigRecord]:
            started = time.perf_counter()
            out = [_instruction(c, train[node].metadata, node) for node, c in contents.items()]
            left = None if deadline is None else max(deadline - time.time(), 0.0)
            replies = list(self.grid.send_and_receive(out, timeout=left))
            report["bytes_down"] += sum(message_bytes(m) for m in out)
            report["bytes_up"] += sum(message_bytes(m) for m in replies)
            describe_received(replies, report["received"].setdefault(str(stage), {}))
            answers, errors = {}, []
            for reply in replies:
                if reply.has_error():  # a dropout at this stage, with its reason
                    errors.append((reply.error.reason or "")[-300:])
                elif wire.SECAGG in reply.content.config_records:
                    answers[reply.metadata.src_node_id] = config_of(reply.content, wire.SECAGG)
            report["dropped"][stage] = len(contents) - len(answers)
            report["errors"] = sorted(set(report["errors"]) | set(errors))[:3]
            if contents and len(errors) == len(contents):
                report["all_failed"] = stage  # every device refused: a setting, not bad luck
            report["stage_seconds"][stage] = time.perf_counter() - started
            return answers

        try:
            setup = exchange(
                Stage.SETUP, {u: RecordDict({wire.SECAGG: record(Stage.SETUP)}) for u in train}
            )
            share_reqs = server.share_keys_requests(
                {u: wire.read_public_keys(r) for u, r in setup.items()}
            )
            shares = exchange(
                Stage.SHARE_KEYS,
                {
                    u: RecordDict(
                        {wire.SECAGG: wire.share_keys_request(record(Stage.SHARE_KEYS), req)}
                    )
                    for u, req in share_reqs.items()
                },
            )
            collect_reqs = server.collect_requests(
                {u: wire.read_share_keys_reply(r) for u, r in shares.items()}
            )
            vectors = exchange(
                Stage.COLLECT_MASKED_VECTORS,
                {
                    u: RecordDict(
                        {
                            **train[u].content,
                            wire.SECAGG: wire.collect_request(
                                record(Stage.COLLECT_MASKED_VECTORS), req
                            ),
                        }
                    )
                    for u, req in collect_reqs.items()
                },
            )
            unmask_reqs = server.unmask_requests(
                {u: wire.read_masked(r) for u, r in vectors.items()}
            )
            unmasked = exchange(
                Stage.UNMASK,
                {
                    u: RecordDict({wire.SECAGG: wire.unmask_request(record(Stage.UNMASK), req)})
                    for u, req in unmask_reqs.items()
                },
            )
            result = server.aggregate({u: wire.read_unmask_reply(r) for u, r in unmasked.items()})
        except SecAggError as err:  # fail closed: nothing was unmasked
            report["status"] = f"failed closed: {type(err).__name__}: {err}"
            return []
        count = len(result.contributors)
        report["survivors"] = count
        *deltas, metric_sum = result.total
        means = metric_sum / wire.metric_scales(config, self.metric_bounds) / count
        total = dict(zip(summed, deltas, strict=True))
        if low_rank is not None:  # Σ A_i·B = (Σ A_i)·B: the sum of factors expands once
            total = low_rank.expand(total, global_[TABLE].shape[1])
        arrays = ArrayRecord({k: Array(v + total[k] / count) for k, v in global_.items()})
        metrics = MetricRecord(
            {
                **{name: float(v) for name, v in zip(self.metric_bounds, means, strict=True)},
                keys.UNIT_WEIGHT: count,
            }
        )
        content = RecordDict(
            {
                keys.ARRAYS: arrays,
                keys.METRICS: metrics,
                wire.SECURE_SUM: ConfigRecord({"count": count}),
            }
        )
        # sent by no device: the server builds it (its source is the server) from the sum
        template = train[result.contributors[0]].metadata
        return [_instruction(content, template, template.src_node_id)]


def _instruction(content: RecordDict, template: Metadata, dst_node_id: int) -> Message:
    """A new train message to ``dst_node_id``, in the group and with the ttl of ``template``
    (a message the strategy built: the secure round's stages belong to its round)."""
    return Message(
        content,
        dst_node_id,
        MessageType.TRAIN,
        group_id=template.group_id,
        ttl=template.ttl,
    )


def _new_report(clients: int, status: str) -> dict[str, Any]:
    return {
        "clients": clients,
        "survivors": 0,
        "dropped": {},
        "errors": [],
        "bytes_down": 0,
        "bytes_up": 0,
        "stage_seconds": {},
        "status": status,
        "received": {},  # per stage: what the replies carried (names, shapes, types)
    }


def secure_sum(message: Message) -> tuple[int, bool]:
    """(contributors, True) for the aggregate reply of a secure round, else (1, False).

    Only the strategy of a secure run may trust this record: a device could forge it, so
    ``RoundRecorder`` drops any reply carrying it unless the run aggregates securely (then
    every reply the strategy sees was built by :class:`SecureAggregationGrid`)."""
    if not message.has_content() or wire.SECURE_SUM not in message.content:
        return 1, False
    count = config_of(message.content, wire.SECURE_SUM).get("count")
    return (count if isinstance(count, int) and count > 0 else 0), True  # 0: malformed
