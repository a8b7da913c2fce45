"""A strategy that wraps another: the base of fedrec's strategy layers.

Flower composes its own additions this way (``flwr/serverapp/strategy/dp_fixed_clipping.py``
holds the inner strategy and delegates). :class:`StrategyWrapper` delegates every method of
Flower's Message-API :class:`~flwr.serverapp.strategy.Strategy` to ``inner``; a layer overrides
only what it changes, and its ``repr`` names the stack (``RoundRecorder(DPFedAvg(...))``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Generic, TypeVar

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

__all__ = ["StrategyWrapper"]

S = TypeVar("S", bound=Strategy)


class StrategyWrapper(Strategy, Generic[S]):
    """Delegates every Strategy method to ``inner``."""

    def __init__(self, inner: S) -> None:
        self.inner = inner

    def __repr__(self) -> str:
        inner = self.inner
        name = repr(inner) if isinstance(inner, StrategyWrapper) else type(inner).__name__
        return f"{type(self).__name__}({name})"

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.inner.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return self.inner.aggregate_train(server_round, replies)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.inner.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        return self.inner.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        self.inner.summary()
