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
* **evaluate**: only ``metrics``, with ``users`` 0 or 1 (one held-out item per device),
  ``num-examples`` equal to it, ``unit-weight`` 1, every rate in [0, 1] and each NDCG at most
  its hit rate, ``er@5`` at most ``er@10`` (both or neither), no rate from a device that
  evaluated nobody.

:meth:`ReplyValidator.records`, :meth:`ReplyValidator.train` and
:meth:`ReplyValidator.evaluate` return why a reply is refused (a short reason from
:data:`REASONS` and the detail), or ``None``. A train reply's model is checked as the
channel decoded it (``common/channel.py``: the float32 weights a device sent, or the
server's model plus its decoded update); the plain aggregation drops refused replies as
failed ones, counts each reason in the round's record (``rejected``), and the round
completes with the rest (``server/plain.py``). A secure round's replies carry no update to
check: SecAgg+ stages are checked by its protocol (``server/secagg.py``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from tokenize import TokenError

import numpy as np
from flwr.app import Message

from fedrec.common import keys
from fedrec.common.privacy import global_norm
from fedrec.server.aggregate import Aggregate

__all__ = ["ARRAY_ERRORS", "MAX_EXAMPLES", "REASONS", "Refusal", "ReplyValidator"]

# what decoding a device's array bytes (``Array.numpy``: numpy's .npy header parser) raises on
# bytes that are not an array; a header of the device's own making can fail its tokenizer too
ARRAY_ERRORS = (
    ValueError, EOFError, TypeError, KeyError, OSError, SyntaxError, TokenError, RecursionError,
)  # fmt: skip

MAX_EXAMPLES = 2**20  # examples one device may claim in a round (SecAgg+ sums it to this bound)
REASONS = (
    "records", "arrays", "shape", "dtype", "non-finite", "update-norm", "metrics",
    "payload",  # an update that does not decode in its channel's form (common/channel.py)
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

    def records(self, msg: Message) -> Refusal | None:
        """A train reply carries exactly the ``arrays`` and ``metrics`` records."""
        content = msg.content
        expected = {keys.ARRAYS, keys.METRICS}
        if (
            set(content.keys()) != expected
            or keys.ARRAYS not in content.array_records
            or keys.METRICS not in content.metric_records
        ):
            return Refusal(
                "records", f"records {sorted(content.keys())}, expected {sorted(expected)}"
            )
        return None

    def train(
        self,
        model: Mapping[str, np.ndarray],
        metrics: Mapping[str, object],
        global_: Mapping[str, np.ndarray],
    ) -> Refusal | None:
        """Why a train reply whose (decoded) ``model`` and ``metrics`` are these is refused,
        or ``None``; ``global_``: the round's model, for the update's norm."""
        names = list(model)
        if set(names) != set(self.shapes) or len(names) != len(self.shapes):
            missing = sorted(set(self.shapes) - set(names))
            extra = sorted(set(names) - set(self.shapes))
            return Refusal("arrays", f"missing {missing}, unexpected {extra}")
        for name, value in model.items():
            if tuple(np.shape(value)) != self.shapes[name]:
                return Refusal("shape", f"{name} is {np.shape(value)}, not {self.shapes[name]}")
            if np.asarray(value).dtype != np.float32:
                return Refusal("dtype", f"{name} is {np.asarray(value).dtype}, not float32")
        for name, value in model.items():
            if not np.isfinite(value).all():
                return Refusal("non-finite", f"{name} has NaN or infinite values")
        norm = global_norm({k: model[k].astype(np.float64) - global_[k] for k in model})
        if norm > self.max_update_norm:
            return Refusal(
                "update-norm", f"‖Δ‖ = {norm:.4g} > max-update-norm {self.max_update_norm:.4g}"
            )
        return self._train_metrics(metrics)

    def aggregate(self, aggregate: Aggregate) -> Refusal | None:
        """A secure round's unmasked sum (no device's update is visible): finite, and its
        mean update within the bound."""
        mean = {k: v / aggregate.count for k, v in aggregate.total.items()}
        if not all(np.isfinite(v).all() for v in mean.values()):
            return Refusal("non-finite", "the unmasked sum has NaN or infinite values")
        norm = global_norm(mean)
        if norm > self.max_update_norm:
            return Refusal(
                "update-norm",
                f"the mean update's ‖Δ‖ = {norm:.4g} > max-update-norm {self.max_update_norm:.4g}",
            )
        return None

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
    def evaluate(self, msg: Message) -> Refusal | None:
        """Why an evaluate reply is refused, or ``None``."""
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
