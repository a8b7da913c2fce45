"""One entry point from a ``--data`` argument to :class:`Interactions`.

``--data synthetic`` (the default) is the embedded generator; anything else is a path that
:func:`fedrec.common.data.loaders.load_ratings` recognises (MovieLens 100K/1M/latest or a CSV).
"""

from __future__ import annotations

from pathlib import Path

from fedrec.common.data.dataset import Interactions, to_implicit
from fedrec.common.data.loaders import load_ratings
from fedrec.common.data.synthetic import SyntheticConfig, generate

__all__ = [
    "SYNTHETIC",
    "load_interactions",
]

SYNTHETIC = "synthetic"


def load_interactions(
    source: str | Path,
    *,
    threshold: float = 0.0,
    synthetic: SyntheticConfig | None = None,
    item_features: Path | None = None,
    user_features: Path | None = None,
) -> Interactions:
    """Read (or generate) ratings and keep those ``>= threshold`` as implicit interactions."""
    if str(source) == SYNTHETIC:
        raw = generate(synthetic or SyntheticConfig())
    else:
        raw = load_ratings(source, item_features=item_features, user_features=user_features)
    return to_implicit(raw, threshold=threshold)
