"""SecAgg+ on Flower's Message API: the protocol's messages as ConfigRecords.

Every stage of a secure round is a ``train`` Message whose content holds a ConfigRecord under
:data:`SECAGG` (the device's :class:`~fedrec.client.secagg.SecAggPlusMod` recognizes it);
the collect stage also carries the usual ``arrays`` and ``config`` records of a training round.
Replies carry one ConfigRecord under :data:`SECAGG` and nothing else: public keys, ciphertexts
the server cannot read, the masked vector as bytes, and Shamir shares. This module is the one
place that turns the protocol's types (:mod:`fedrec.common.secagg.primitives`) into records and
back, so the client and the server cannot disagree on a key name.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.app import ConfigRecord
from flwr.common.secure_aggregation.secaggplus_constants import Stage

from fedrec.common.secagg.primitives import (
    CollectRequest,
    ProtocolViolationError,
    PublicKeys,
    SecAggConfig,
    ShareKeysReply,
    ShareKeysRequest,
    UnmaskReply,
    UnmaskRequest,
)

__all__ = [
    "REPLY_KEYS",
    "SECAGG",
    "STAGE",
    "STATE",
    "collect_request",
    "config_digest",
    "config_record",
    "masked_reply",
    "metric_bounds",
    "metric_scales",
    "public_keys_reply",
    "read_collect_request",
    "read_masked",
    "read_public_keys",
    "read_share_keys_reply",
    "read_share_keys_request",
    "read_unmask_reply",
    "read_unmask_request",
    "round_config",
    "share_keys_reply",
    "share_keys_request",
    "stage_of",
    "unmask_reply",
    "unmask_request",
]

SECAGG = "secagg"  # the record of a secure round, in both directions
STAGE = "stage"
STATE = "fedrec.secagg"  # node state: the client's secrets between stages (never sent)

# Scalar metrics ride in the masked vector: metric i is scaled by c / bound_i, so values
# within ±bound_i are summed to within n quantization steps of 2·bound_i / Q each (larger
# values are clipped to ±bound_i). The server sends the names and bounds with every stage.

# what a client may put in its reply's SECAGG record, per stage (the privacy guard checks it)
REPLY_KEYS = {
    Stage.SETUP: {STAGE, "mask-key", "share-key"},
    Stage.SHARE_KEYS: {STAGE, "destinations", "ciphertexts"},
    Stage.COLLECT_MASKED_VECTORS: {STAGE, "masked"},
    Stage.UNMASK: {STAGE, "node-ids", "shares"},
}


def config_record(
    stage: str, config: SecAggConfig, metric_bounds: Mapping[str, float]
) -> ConfigRecord:
    """The round's parameters, sent with every stage. A client validates them at every stage
    and refuses a stage whose parameters differ from those of its setup."""
    return _record(
        {
            STAGE: stage,
            "num-clients": config.num_clients,
            "threshold": config.threshold,
            "neighbours": config.neighbours,
            "clipping-range": config.clipping_range,
            "quantization-range": config.quantization_range,
            "modulus": _encode_int(config.modulus),
            "metric-keys": list(metric_bounds),
            "metric-bounds": [float(b) for b in metric_bounds.values()],
        }
    )


def round_config(record: Mapping[str, Any]) -> SecAggConfig:
    """The SecAggConfig a stage record describes; its own checks reject unsafe values."""
    try:
        n, k = int(record["num-clients"]), int(record["neighbours"])
        return SecAggConfig(
            num_clients=n,
            threshold=int(record["threshold"]),
            num_neighbours=None if k == n - 1 else k,
            clipping_range=float(record["clipping-range"]),
            quantization_range=int(record["quantization-range"]),
            modulus=_decode_int(record["modulus"]),
        )
    except (KeyError, TypeError) as exc:
        raise ProtocolViolationError(f"secagg record: missing or malformed ({exc!r})") from exc


def metric_bounds(record: Mapping[str, Any]) -> dict[str, float]:
    """The metrics the server asks to be summed, and the bound of each."""
    names, bounds = record.get("metric-keys", []), record.get("metric-bounds", [])
    if not isinstance(names, list) or not isinstance(bounds, list) or len(names) != len(bounds):
        raise ProtocolViolationError("secagg record: metric names and bounds do not pair up")
    out = {str(k): float(b) for k, b in zip(names, bounds, strict=True)}
    if not all(math.isfinite(b) and b > 0 for b in out.values()):
        raise ProtocolViolationError("secagg record: metric bounds must be finite and > 0")
    return out


def stage_of(record: Mapping[str, Any]) -> str:
    stage = record.get(STAGE)
    if stage not in Stage.all():
        raise ProtocolViolationError(f"secagg record: unknown stage {stage!r}")
    return str(stage)


# --- server -> client ----------------------------------------------------------------------
def share_keys_request(base: ConfigRecord, request: ShareKeysRequest) -> ConfigRecord:
    ids = sorted(request.public_keys)
    return _record(
        {
            **base,
            "node-ids": [_encode_int(i) for i in ids],
            "mask-keys": [request.public_keys[i].mask_key for i in ids],
            "share-keys": [request.public_keys[i].share_key for i in ids],
        }
    )


def read_share_keys_request(record: Mapping[str, Any]) -> ShareKeysRequest:
    ids = _ids(record, "node-ids")
    pks = zip(_bytes_list(record, "mask-keys"), _bytes_list(record, "share-keys"), strict=False)
    keys = [PublicKeys(m, s) for m, s in pks]
    if len(keys) != len(ids):
        raise ProtocolViolationError("share_keys request: ids and keys differ in number")
    return ShareKeysRequest(dict(zip(ids, keys, strict=True)))


def collect_request(base: ConfigRecord, request: CollectRequest) -> ConfigRecord:
    return _record(
        {
            **base,
            "sources": [_encode_int(i) for i in request.sources],
            "ciphertexts": list(request.ciphertexts),
        }
    )


def read_collect_request(record: Mapping[str, Any]) -> CollectRequest:
    return CollectRequest(tuple(_ids(record, "sources")), tuple(_bytes_list(record, "ciphertexts")))


def unmask_request(base: ConfigRecord, request: UnmaskRequest) -> ConfigRecord:
    return _record(
        {
            **base,
            "survivors": [_encode_int(i) for i in request.survivors],
            "dropped": [_encode_int(i) for i in request.dropped],
        }
    )


def read_unmask_request(record: Mapping[str, Any]) -> UnmaskRequest:
    return UnmaskRequest(tuple(_ids(record, "survivors")), tuple(_ids(record, "dropped")))


# --- client -> server ----------------------------------------------------------------------
def public_keys_reply(keys: PublicKeys) -> ConfigRecord:
    return _record({STAGE: Stage.SETUP, "mask-key": keys.mask_key, "share-key": keys.share_key})


def read_public_keys(record: Mapping[str, Any]) -> PublicKeys:
    mask, share = record.get("mask-key"), record.get("share-key")
    if not isinstance(mask, bytes) or not isinstance(share, bytes):
        raise ProtocolViolationError("setup reply: public keys missing")
    return PublicKeys(mask, share)


def share_keys_reply(reply: ShareKeysReply) -> ConfigRecord:
    return _record(
        {
            STAGE: Stage.SHARE_KEYS,
            "destinations": [_encode_int(i) for i in reply.destinations],
            "ciphertexts": list(reply.ciphertexts),
        }
    )


def read_share_keys_reply(record: Mapping[str, Any]) -> ShareKeysReply:
    return ShareKeysReply(
        tuple(_ids(record, "destinations")), tuple(_bytes_list(record, "ciphertexts"))
    )


def masked_reply(masked: bytes) -> ConfigRecord:
    return _record({STAGE: Stage.COLLECT_MASKED_VECTORS, "masked": masked})


def read_masked(record: Mapping[str, Any]) -> bytes:
    masked = record.get("masked")
    if not isinstance(masked, bytes):
        raise ProtocolViolationError("collect reply: masked vector missing")
    return masked


def unmask_reply(reply: UnmaskReply) -> ConfigRecord:
    return _record(
        {
            STAGE: Stage.UNMASK,
            "node-ids": [_encode_int(i) for i in reply.node_ids],
            "shares": list(reply.shares),
        }
    )


def read_unmask_reply(record: Mapping[str, Any]) -> UnmaskReply:
    return UnmaskReply(tuple(_ids(record, "node-ids")), tuple(_bytes_list(record, "shares")))


# --- helpers -------------------------------------------------------------------------------
def _record(values: Mapping[str, Any]) -> ConfigRecord:
    """A ConfigRecord without empty lists (Flower 1.42 cannot size or serialize ``[]``;
    every reader here takes a missing list as empty)."""
    return ConfigRecord({k: v for k, v in values.items() if not (isinstance(v, list) and not v)})


# Flower node ids are unsigned 64-bit; a ConfigRecord int is signed 64-bit: ids travel as
# decimal strings (so do moduli up to 2^64).
def _encode_int(value: int) -> str:
    return str(int(value))


def _decode_int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ProtocolViolationError(f"secagg record: {value!r} is not an integer")
    try:
        return int(value)
    except ValueError as exc:
        raise ProtocolViolationError(f"secagg record: {value!r} is not an integer") from exc


def _ids(record: Mapping[str, Any], key: str) -> list[int]:
    values = record.get(key, [])
    if not isinstance(values, list):
        raise ProtocolViolationError(f"secagg record: {key} is not a list")
    return [_decode_int(v) for v in values]


def _bytes_list(record: Mapping[str, Any], key: str) -> list[bytes]:
    values = record.get(key, [])
    if not isinstance(values, list) or not all(isinstance(v, bytes) for v in values):
        raise ProtocolViolationError(f"secagg record: {key} is not a list of bytes")
    return list(values)


def metric_scales(config: SecAggConfig, bounds: Mapping[str, float]) -> np.ndarray:
    """Metric value → coordinate of the masked vector (multiply), and back (divide)."""
    return np.array([config.clipping_range / b for b in bounds.values()], dtype=np.float64)


def config_digest(record: Mapping[str, Any]) -> str:
    """What must not change between the stages of one round (compared by the client)."""
    fixed = ("num-clients", "threshold", "neighbours", "clipping-range", "quantization-range",
             "modulus", "metric-keys", "metric-bounds")  # fmt: skip
    return repr([record.get(k) for k in fixed])
