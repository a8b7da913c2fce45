"""Low-rank item-table updates: CoLR (Nguyen et al., 2024, "Towards Efficient Communication
and Secure Federated Recommendation System via Low-rank Training").

The item-id table E (items × d) is most of the shared group (90 % on ml-100k at d = 64),
and so of every upload. With ``colr-rank`` r > 0 each training round's model carries a
fresh seed (``keys.COLR_SEED``) and the rank (``keys.COLR_RANK``); both ends build the same
basis B (r × d, orthonormal rows) from the seed alone, so it is data-independent and public.
The device trains the table's update as a factor (items × r) from zero, the rest of the
shared group as it always does (E = E_start + F·B·√(d/r): the scale makes the expected SGD
step the full one, :meth:`LowRank.training_basis`), and uploads A = ΔE·Bᵀ in place of ΔE:
r/d of the table's bytes. The server expands ΔE = A·B, exactly the trained update.

Why it composes with the privacy features:
  * B has orthonormal rows, so ‖A·B‖ = ‖A‖: the user-level clip and DP-FedAvg's noise mean
    the same in either form; a factor computed from any ΔE (A = ΔE·Bᵀ, what a device
    sends) is its projection, never longer.
  * The map is linear and the same for the whole cohort, so the sum of the factors is the
    factor of the sum: SecAgg+ masks and sums the A's, and the server expands the sum.
  * Nothing about it depends on the data: every row of A is sent, touched or not, so the
    factor reveals no more about which items a device trained on than ΔE did.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from fedrec.common import keys

__all__ = [
    "FACTOR",
    "TABLE",
    "LowRank",
    "basis",
    "expand",
    "factor",
    "factored_shapes",
]

TABLE = "item_embedding.weight"  # the item-id table, the only array factored
FACTOR = "item_embedding.factor"  # its rank-r factor A on the wire (items × r)
# a round's basis seed: [run seed, _STREAM, round], apart from every device stream of the run
# seed ([seed, node, round, ...] with node < 2^40)
_STREAM = 2**40 + 3


@dataclass(frozen=True)
class LowRank:
    """One round's low-rank form: the rank r and the seed of its basis."""

    rank: int
    seed: int

    @classmethod
    def for_round(cls, rank: int, run_seed: int, server_round: int) -> LowRank:
        """A fresh basis each round, drawn from the run seed and the round (reproducible)."""
        seed = int(np.random.default_rng([run_seed, _STREAM, server_round]).integers(2**62))
        return cls(rank, seed)

    @classmethod
    def of(cls, config: Mapping[str, object]) -> LowRank | None:
        """The form a message's config names; ``None`` without ``keys.COLR_RANK``."""
        if keys.COLR_RANK not in config:
            return None
        rank, seed = config.get(keys.COLR_RANK), config.get(keys.COLR_SEED)
        if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
            raise ValueError(f"{keys.COLR_RANK} is {rank!r}: a low-rank round needs a rank >= 1")
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"{keys.COLR_SEED} is {seed!r}: a low-rank round needs its seed")
        return cls(rank, seed)

    def check(self, shapes: Mapping[str, tuple[int, ...]]) -> None:
        """Refuse a form the model cannot take: no item table, or r not below its width."""
        if TABLE not in shapes:
            raise ValueError(f"a low-rank round needs the item table {TABLE!r} in the model")
        width = shapes[TABLE][1]
        if not 1 <= self.rank < width:
            raise ValueError(
                f"{keys.COLR_RANK} {self.rank} must be in [1, {width}), the table's width"
            )

    def config(self) -> dict[str, int]:
        """What a train message says about its round's form."""
        return {keys.COLR_RANK: self.rank, keys.COLR_SEED: self.seed}

    def basis(self, width: int) -> np.ndarray:
        """B (rank × width), float64, orthonormal rows."""
        return basis(self.seed, self.rank, width)

    def training_basis(self, width: int) -> np.ndarray:
        """What the device trains the factor against: B·√(width/rank), so E[BᵀB] = I over
        the random basis and an SGD step on the factor is, in expectation, the full step on
        the table (with B alone every step would shrink to rank/width of it: measured, HR@10
        0.23 against 0.33 dense after 10 rounds). Its span is B's, so the update it trains
        is still sent exactly as ΔE·Bᵀ."""
        return self.basis(width) * np.sqrt(width / self.rank)

    def shapes(self, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
        """The upload's names and shapes over the shared group's ``shapes``."""
        return factored_shapes(shapes, self.rank)

    def factor(self, delta: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``delta`` with the table's ΔE replaced by its factor on this round's basis."""
        return factor(delta, self.basis(np.shape(delta[TABLE])[1]))

    def expand(self, factored: Mapping[str, np.ndarray], width: int) -> dict[str, np.ndarray]:
        """The factored update back to the shared group's form (ΔE = A·B)."""
        return expand(factored, self.basis(width))


@lru_cache(maxsize=4)  # one per round, asked for by every reply the server decodes
def basis(seed: int, rank: int, width: int) -> np.ndarray:
    """B (rank × width) with orthonormal rows, from ``seed`` alone: the QR of a Gaussian
    matrix, signs fixed by R's diagonal so every LAPACK gives the same B."""
    if not 1 <= rank < width:
        raise ValueError(
            f"colr-rank {rank} must be in [1, {width}): the item table is {width} wide"
        )
    gaussian = np.random.default_rng(seed).standard_normal((width, rank))
    q, r = np.linalg.qr(gaussian)  # q: (width, rank), orthonormal columns
    q *= np.where(np.diag(r) < 0, -1.0, 1.0)
    out = np.ascontiguousarray(q.T)
    out.setflags(write=False)  # cached: shared by every caller
    return out


def factored_shapes(shapes: Mapping[str, tuple[int, ...]], rank: int) -> dict[str, tuple[int, ...]]:
    """The upload's names and shapes: the table (items × d) replaced, in place, by its
    factor (items × rank)."""
    if TABLE not in shapes:
        raise ValueError(f"a low-rank update needs the item table {TABLE!r} in the model")
    return {
        (FACTOR if name == TABLE else name): ((shape[0], rank) if name == TABLE else shape)
        for name, shape in shapes.items()
    }


def factor(delta: Mapping[str, np.ndarray], basis_: np.ndarray) -> dict[str, np.ndarray]:
    """The update with the table's ΔE replaced, in place, by A = ΔE·Bᵀ (its projection on
    the basis: exact when ΔE = A·B, as a device's trained update is)."""
    out: dict[str, np.ndarray] = {}
    for name, value in delta.items():
        if name == TABLE:
            out[FACTOR] = (np.asarray(value, np.float64) @ basis_.T).astype(value.dtype)
        else:
            out[name] = value
    return out


def expand(factored: Mapping[str, np.ndarray], basis_: np.ndarray) -> dict[str, np.ndarray]:
    """The inverse of :func:`factor` on its image: A back to ΔE = A·B (float64)."""
    out: dict[str, np.ndarray] = {}
    for name, value in factored.items():
        if name == FACTOR:
            out[TABLE] = np.asarray(value, np.float64) @ basis_
        else:
            out[name] = value
    return out
