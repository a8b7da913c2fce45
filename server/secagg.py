"""Secure aggregation (SecAgg+, Bell et al. 2020): the server's half, as an aggregator.

A secure training round is four Flower message stages, run here on the protocol objects of
:mod:`fedrec.common.secagg.protocol`:

    setup (public keys) → share_keys (encrypted Shamir shares, relayed) →
    collect_masked_vectors (the round's train content + each client's ciphertexts; clients
    train and reply with q(Δ) + masks mod M) → unmask (shares of seeds / of dropped clients' keys)

after which the server knows only the sum of the survivors' quantized updates (in the
round channel's layout: the item table's factor in a low-rank round) and of the metrics it
asked for. :class:`SecureAggregation` returns that sum as an
:class:`~fedrec.server.aggregate.Aggregate` over the round's exact model — the same type a
plain round yields — so DP-FedAvg noises it and the server optimizer steps to its mean
without knowing where it came from. A round whose survivors fall below the threshold fails
closed: nothing is unmasked and there is no aggregate (a skipped round, or a noise-only
round under DP). The device's half is ``client/secagg.py``.

Why not Flower's ``SecAggPlusWorkflow`` + ``secaggplus_mod``: in 1.42 they exist only on the
legacy API (``DefaultWorkflow``, ``FitIns``/``FitRes``); fedrec's round loop, DP-FedAvg and
private node state are on the Message API.

Parameters (``[tool.flwr.app.config]``): ``secagg-neighbours`` k (0: SecAgg+ with
k = 2⌈log2 n⌉; ≥ n − 1: every pair, the original SecAgg), ``secagg-threshold`` (fraction
of each client's k + 1 shares needed to rebuild its secrets; at least a majority),
``secagg-clip-range`` c and ``secagg-quantization-bits`` b (Q = 2^b: each coordinate of Δ is
clipped to [−c, c] and rounded to one of Q + 1 levels, step 2c/Q; the sum of n is exact to
within n steps, see ``SecAggConfig.max_sum_error``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Message, MessageType, Metadata, RecordDict
from flwr.common.secure_aggregation.secaggplus_constants import Stage
from flwr.serverapp import Grid

from fedrec.common import keys
from fedrec.common.channel import Channel, SecureUpload
from fedrec.common.colr import LowRank
from fedrec.common.fedconfig import FederationConfig
from fedrec.common.records import config_of, describe_received, message_bytes
from fedrec.common.secagg import wire
from fedrec.common.secagg.primitives import MIN_SECURE_CLIENTS, SecAggError, SecAggSettings
from fedrec.common.secagg.protocol import SecAggServer
from fedrec.server.aggregate import Aggregate, TrainReport, TrainRound
from fedrec.server.validation import ReplyValidator

__all__ = ["SUMMED_METRICS", "SecureAggregation", "check_secure_sizing"]

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


class SecureAggregation:
    """Runs each training round as a SecAgg+ round (see the module docstring); ``rng``
    draws the neighbour graph (seeded only in research runs)."""

    def __init__(
        self,
        settings: SecAggSettings,
        validator: ReplyValidator | None = None,
        metric_bounds: Mapping[str, float] | None = None,
        rng: np.random.Generator | None = None,
    ) -> None:
        self.settings = settings
        self.validator = validator  # checks the unmasked sum: finite, its mean update bounded
        self.metric_bounds = dict(SUMMED_METRICS if metric_bounds is None else metric_bounds)
        self._rng = rng if rng is not None else np.random.default_rng()

    def __repr__(self) -> str:
        return "SecureAggregation(SecAgg+)"

    def aggregate(self, grid: Grid, round_: TrainRound) -> tuple[Aggregate | None, TrainReport]:
        train = {m.metadata.dst_node_id: m for m in round_.messages}
        n = len(train)
        figures = _figures(n, "ok")
        report = TrainReport(sampled=n, secagg=figures)
        if n < MIN_SECURE_CLIENTS:  # (none: an empty Poisson cohort)
            figures["status"] = (
                "skipped: no clients sampled"
                if n == 0
                else f"skipped: {n} clients sampled, a secure sum needs {MIN_SECURE_CLIENTS}"
            )
            self._finish(report)
            return None, report
        config = self.settings.for_round(n)
        figures.update(neighbours=config.neighbours, threshold=config.threshold)
        figures["modulus_bits"] = config.modulus.bit_length() - 1
        summed = round_.channel.update_shapes()  # what the devices mask, in this order
        shapes = [*summed.values(), (len(self.metric_bounds),)]
        server = SecAggServer(config, sorted(train), shapes, self._rng)
        deadline = time.time() + round_.timeout

        def record(stage: str) -> ConfigRecord:
            return wire.config_record(stage, config, self.metric_bounds)

        def exchange(stage: str, contents: Mapping[int, RecordDict]) -> dict[int, ConfigRecord]:
            started = time.perf_counter()
            out = [_instruction(c, train[node].metadata, node) for node, c in contents.items()]
            replies = list(grid.send_and_receive(out, timeout=max(deadline - time.time(), 0.0)))
            report.bytes_down += sum(message_bytes(m) for m in out)
            report.bytes_up += sum(message_bytes(m) for m in replies)
            describe_received(replies, report.received.setdefault(str(stage), {}))
            answers, errors = {}, []
            for reply in replies:
                if reply.has_error():  # a dropout at this stage, with its reason
                    errors.append((reply.error.reason or "")[-300:])
                elif wire.SECAGG in reply.content.config_records:
                    answers[reply.metadata.src_node_id] = config_of(reply.content, wire.SECAGG)
            figures["dropped"][stage] = len(contents) - len(answers)
            report.errors = sorted(set(report.errors) | set(errors))[:3]
            if contents and len(errors) == len(contents):  # every device refused: a setting
                report.all_refused = (
                    f"every client refused the secure round at stage {stage}; first error:"
                    f" {(report.errors or [''])[0]}"
                )
            figures["stage_seconds"][stage] = time.perf_counter() - started
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
            figures["status"] = f"failed closed: {type(err).__name__}: {err}"
            self._finish(report)
            return None, report
        count = len(result.contributors)
        figures["survivors"] = count
        *deltas, metric_sum = result.total
        means = metric_sum / wire.metric_scales(config, self.metric_bounds) / count
        # Σ A_i·B = (Σ A_i)·B: a low-rank round's sum of factors expands once
        total = round_.channel.expand(dict(zip(summed, deltas, strict=True)))
        metrics = {name: float(v) for name, v in zip(self.metric_bounds, means, strict=True)}
        self._finish(report)
        aggregate = Aggregate.of_sum(round_.start, total, count, metrics)
        refusal = self.validator.aggregate(aggregate) if self.validator is not None else None
        if refusal is not None:  # a sum no honest cohort makes: the round changes nothing
            report.rejected[refusal.reason] = 1
            report.contributed, report.failed = 0, report.sampled
            return None, report
        return aggregate, report

    @staticmethod
    def _finish(report: TrainReport) -> None:
        """The four stages' traffic, per client: what the round's record states."""
        figures = report.secagg
        assert figures is not None
        n = max(figures["clients"], 1)
        report.contributed = figures["survivors"]
        report.failed = figures["clients"] - figures["survivors"]
        report.bytes_down_per_client = report.bytes_down / n
        report.bytes_up_per_client = report.bytes_up / n
        figures.update(errors=list(report.errors), bytes_down=report.bytes_down)
        figures["bytes_up"] = report.bytes_up


def check_secure_sizing(config: FederationConfig, shapes: Mapping[str, tuple[int, ...]]) -> None:
    """Fail now, not as failed or noise-only rounds: a compact round (upload-compression =
    int8) needs a quantization bit for the largest cohort likely to come, and under DP the
    device clips to C minus the rounding margin of that cohort's step."""
    m = config.rounds.clients_per_round or MIN_SECURE_CLIENTS
    cohort = max(MIN_SECURE_CLIENTS, m + math.ceil(4 * math.sqrt(m)))  # a Poisson cohort's top
    sizing = config.secagg_settings().for_round(cohort)  # raises for a compact round too large
    if not config.user_dp.enabled:
        return
    channel = Channel(  # what the devices mask: in a low-rank round, the table's factor
        dict(shapes),
        low_rank=LowRank(config.exchange.colr_rank, 0) if config.exchange.colr_rank else None,
        secure=SecureUpload(sizing, len(SUMMED_METRICS)),
    )
    _, margin = channel.margin({})
    if config.user_dp.clip_norm <= margin:
        length = channel.update_length() + len(SUMMED_METRICS)
        raise ValueError(
            f"dp-clip-norm {config.user_dp.clip_norm} is within the quantization error"
            f" {margin:.3g} of a {length}-coordinate update: raise"
            " secagg-quantization-bits or dp-clip-norm, or lower secagg-clip-range (a compact"
            " round, upload-compression = int8, has the bits its cohort leaves)"
        )


def _instruction(content: RecordDict, template: Metadata, dst_node_id: int) -> Message:
    """A new train message to ``dst_node_id``, in the group and with the ttl of
    ``template`` (the round's message to that node: the stages belong to its round)."""
    return Message(
        content,
        dst_node_id,
        MessageType.TRAIN,
        group_id=template.group_id,
        ttl=template.ttl,
    )


def _figures(clients: int, status: str) -> dict[str, Any]:
    return {
        "clients": clients,
        "survivors": 0,
        "dropped": {},
        "errors": [],
        "stage_seconds": {},
        "status": status,
    }
