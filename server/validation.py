"""Every reply the server takes is checked once, before anything aggregates it.

A device is not trusted: one NaN in one item table would make the average NaN, one reply
scaled by 1e6 would be averaged in, a forged ``users`` count would decide the run's HR@10.
:class:`ReplyValidator` knows what an honest reply is:

* **train** (from a device): exactly the records ``arrays`` and ``metrics``; the arrays are
  exactly the shared group's names, shapes and dtype (float32), every value finite, and the
  update (reply − the round's global model) has an L2 norm of at most ``max_update_norm``
  (the ``max-update-norm`` setting; default: the norm of the model the run started from, an
  order of magnitude above honest updates: 0.8 median, 2.5 max on ml-100k at five local
  epochs against 33.5); the metrics are only the keys a device sends, each in its range:
  ``unit-weight`` exactly 1, ``num-examples`` an integer in [0, ``max_examples``] (at least 1
  when the run weighs by examples), flags 0 or 1, loss and ε finite and ≥ 0;
* **train, under SecAgg+** (the aggregate the secure grid unmasked: no device's update is
  visible): the same names and shapes, finite, a positive contributor count, and a mean update
  within the bound;
* **evaluate**: only ``metrics``, with ``users`` 0 or 1 (one held-out item per device),
  ``num-examples`` equal to it, ``unit-weight`` 1, every rate in [0, 1] and each NDCG at most
  its hit rate, ``er@5`` at most ``er@10`` (both or neither), no rate from a device that
  evaluated nobody.

:meth:`ReplyValidator.check` returns why a reply is refused (a short reason from
:data:`REASONS` and the detail), or ``None``. The recorder drops refused replies as failed
replies, counts each reason in the round's record (``rejected``), and the round completes
with the rest (server/recorder.py).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from flwr.app import Message, MessageType

from fedrec.common import keys
from fedrec.common.privacy import global_norm
from fedrec.common.secagg.grid import secure_sum
from fedrec.common.secagg.wire import SECURE_SUM

__all__ = ["ARRAY_ERRORS", "MAX_EXAMPLES", "REASONS", "Refusal", "ReplyValidator"]

# what decoding a device's array bytes (``Array.numpy``) raises on bytes that are not an array
ARRAY_ERRORS = (ValueError, EOFError, TypeError, KeyError, OSError)

MAX_EXAMPLES = 2**20  # examples one device may claim in a round (SecAgg+ sums it to this bound)
REASONS = (
    "records", "arrays", "shape", "dtype", "non-finite", "update-norm", "metrics",
    "payload",  # a compressed update that does not decode (server/exchange.py)
)  # fmt: skip
FLAGS = (keys.RETURNING, keys.BUDGET_EXHAUSTED)
NON_NEGATIVE = (keys.TRAIN_LOSS, keys.RECORD_EPSILON)


@dataclass(frozen=True)
class Refusal:
    reason: str  # one of REASONS
    detail: str

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


class ReplyValidator:
    """What an honest reply carries (see the module docstring)."""

    def __init__(
        self,
        shapes: Mapping[str, tuple[int, ...]],
        *,
        max_update_norm: float,
        weigh_by_examples: bool = False,
        max_examples: int = MAX_EXAMPLES,
    ) -> None:
        if not max_update_norm > 0 or not math.isfinite(max_update_norm):
            raise ValueError(f"max_update_norm must be a positive number, got {max_update_norm}")
        self.shapes = {k: tuple(v) for k, v in shapes.items()}
        self.max_update_norm = float(max_update_norm)
        self.weigh_by_examples = weigh_by_examples
        self.max_examples = max_examples

    def check(self, msg: Message, global_: Mapping[str, np.ndarray] | None) -> Refusal | None:
        """Why ``msg`` (a reply without an error) is refused, or ``None``. ``global_``: the
        round's model, for the update's norm (train replies)."""
        if msg.metadata.message_type == MessageType.EVALUATE:
            return self._evaluate(msg)
        return self._train(msg, global_)

    # --- train ------------------------------------------------------------------------------
    def _train(self, msg: Message, global_: Mapping[str, np.ndarray] | None) -> Refusal | None:
        content = msg.content
        count, summed = secure_sum(msg)
        expected = {keys.ARRAYS, keys.METRICS} | ({SECURE_SUM} if summed else set())
        if set(content.keys()) != expected or keys.ARRAYS not in content.array_records:
            return Refusal(
                "records", f"records {sorted(content.keys())}, expected {sorted(expected)}"
            )
        if summed and count < 1:
            return Refusal("records", "a secure sum with no contributor")
        record = content.array_records[keys.ARRAYS]
        names = list(record.keys())
        if set(names) != set(self.shapes) or len(names) != len(self.shapes):
            missing = sorted(set(self.shapes) - set(names))
            extra = sorted(set(names) - set(self.shapes))
            return Refusal("arrays", f"missing {missing}, unexpected {extra}")
        for name, array in record.items():
            if tuple(array.shape) != self.shapes[name]:
                return Refusal("shape", f"{name} is {tuple(array.shape)}, not {self.shapes[name]}")
            if not summed and array.dtype != "float32":  # a sum is the server's own float64
                return Refusal("dtype", f"{name} is {array.dtype}, not float32")
        try:  # the bytes are the device's: a header or a length that lies is a refusal
            values = {name: array.numpy() for name, array in record.items()}
        except ARRAY_ERRORS as err:
            return Refusal("arrays", f"undecodable array bytes: {type(err).__name__}: {err}")
        for name, value in values.items():
            if not np.isfinite(value).all():
                return Refusal("non-finite", f"{name} has NaN or infinite values")
        if global_ is not None:
            norm = global_norm({k: values[k].astype(np.float64) - global_[k] for k in values})
            if norm > self.max_update_norm:
                return Refusal(
                    "update-norm", f"‖Δ‖ = {norm:.4g} > max-update-norm {self.max_update_norm:.4g}"
                )
        metrics = content.metric_records.get(keys.METRICS)
        if metrics is None:
            return Refusal("records", "no metrics record")
        return None if summed else self._train_metrics(dict(metrics))

    def _train_metrics(self, metrics: Mapping[str, object]) -> Refusal | None:
        numbers = _finite_numbers(metrics, keys.TRAIN_METRICS)
        if isinstance(numbers, Refusal):
            return numbers
        if numbers.get(keys.UNIT_WEIGHT) != 1.0:
            return Refusal("metrics", f"unit-weight = {metrics.get(keys.UNIT_WEIGHT)!r}, not 1")
        examples = numbers.get(keys.NUM_EXAMPLES)
        low = 1 if self.weigh_by_examples else 0
        if examples is None and self.weigh_by_examples:
            return Refusal("metrics", "no num-examples (the run weighs replies by it)")
        if examples is not None and not (
            examples.is_integer() and low <= examples <= self.max_examples
        ):
            return Refusal(
                "metrics",
                f"num-examples = {examples:g}, not an integer in [{low}, {self.max_examples}]",
            )
        for key in FLAGS:
            if key in numbers and numbers[key] not in (0.0, 1.0):
                return Refusal("metrics", f"{key} = {numbers[key]:g}, not 0 or 1")
        for key in NON_NEGATIVE:
            if key in numbers and numbers[key] < 0:
                return Refusal("metrics", f"{key} = {numbers[key]:g} < 0")
        return None

    # --- evaluate ---------------------------------------------------------------------------
    def _evaluate(self, msg: Message) -> Refusal | None:
        content = msg.content
        if set(content.keys()) != {keys.METRICS} or keys.METRICS not in content.metric_records:
            return Refusal("records", f"records {sorted(content.keys())}, expected ['metrics']")
        metrics = dict(content.metric_records[keys.METRICS])
        numbers = _finite_numbers(metrics, keys.EVALUATE_METRICS)
        if isinstance(numbers, Refusal):
            return numbers
        users = numbers.get(keys.USERS)
        if users not in (0.0, 1.0):
            return Refusal("metrics", f"users = {metrics.get(keys.USERS)!r}, not 0 or 1")
        if numbers.get(keys.NUM_EXAMPLES, users) != users:
            return Refusal("metrics", f"num-examples = {numbers[keys.NUM_EXAMPLES]:g} ≠ users")
        if numbers.get(keys.UNIT_WEIGHT, 1.0) != 1.0:
            return Refusal("metrics", f"unit-weight = {numbers[keys.UNIT_WEIGHT]:g}, not 1")
        rates = {
            k: v
            for k, v in numbers.items()
            if k not in (keys.USERS, keys.NUM_EXAMPLES, keys.UNIT_WEIGHT)
        }
        if rates and users == 0:
            return Refusal("metrics", f"rates {sorted(rates)} from a device that evaluated nobody")
        for key, value in rates.items():
            if not 0.0 <= value <= 1.0:
                return Refusal("metrics", f"{key} = {value:g} outside [0, 1]")
        for prefix in ("", keys.VAL_PREFIX, keys.COLD_PREFIX):
            for hit, gain in ((keys.HR, keys.NDCG), (keys.FULL_HR, keys.FULL_NDCG)):
                h, g = rates.get(prefix + hit), rates.get(prefix + gain)
                if h is not None and g is not None and g > h + 1e-9:
                    return Refusal("metrics", f"{prefix + gain} = {g:g} > {prefix + hit} = {h:g}")
        top5, top10 = rates.get(keys.ER5), rates.get(keys.ER10)
        if (top5 is None) != (top10 is None) or (top5 or 0.0) > (top10 or 0.0) + 1e-9:
            return Refusal("metrics", f"{keys.ER5} = {top5}, {keys.ER10} = {top10}")
        return None


def _finite_numbers(
    metrics: Mapping[str, object], allowed: frozenset[str]
) -> dict[str, float] | Refusal:
    """The metrics as floats, or the refusal of the first key not ``allowed``, not a number
    or not finite."""
    unknown = sorted(set(metrics) - allowed)
    if unknown:
        return Refusal("metrics", f"unexpected keys {unknown}")
    numbers = {}
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            return Refusal("metrics", f"{key} = {value!r} is not a number")
        if not math.isfinite(value):
            return Refusal("metrics", f"{key} = {value} is not finite")
        numbers[key] = float(value)
    return numbers
