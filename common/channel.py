"""The exchange's wire forms, both ways: one channel object per round, shared by both ends.

A round sends the shared group down to its devices and gets each device's contribution
back. :class:`Channel` is the one owner of the forms they travel in, built from what a
round's message says (:meth:`Channel.of`) or from the run's settings (:meth:`for_round`):

* **down**, the model: float32 as it is, or compressed (``download-compression``: fp16,
  int8 rounded to the nearest level, :mod:`fedrec.common.compression`);
* **up**, the device's contribution: its float32 weights (nothing compressed, no low
  rank), or its update Δ = local − start in the upload's form (``upload-compression``:
  none, fp16, int8 rounded stochastically), with the item table's Δ as its rank-r factor
  on the round's public basis in a low-rank round (``colr-rank``, :mod:`fedrec.common.colr`);
  in a secure round (SecAgg+) Δ goes to the masking unrounded, and SecAgg+'s quantizer is
  the rounding.

Every form states its rounding margin (:meth:`Channel.margin`): the device's user-level
clip is computed once from the clip norm C and that margin (:meth:`Channel.clip_bound`), so
the update the server decodes, or SecAgg+ sums, is within C however the rounding falls.
SecAgg+ asks the channel for the layout it masks (:meth:`Channel.update_shapes`) and
DP-FedAvg for the subspace its noise lives in (:meth:`Channel.noise_subspaces`). The
device's mod (``client/exchange.py``) and the server's aggregation (``server/plain.py``,
``server/secagg.py``) use nothing else. Pure NumPy, no Flower or torch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from fedrec.common import keys
from fedrec.common.colr import TABLE, LowRank
from fedrec.common.compression import (
    MODES,
    Layout,
    compress,
    decompress,
    payload_layout,
    rounding_bound,
)
from fedrec.common.records import exchange_modes
from fedrec.common.secagg.primitives import SecAggConfig

__all__ = ["Channel", "SecureUpload"]

Arrays = dict[str, np.ndarray]


@dataclass(frozen=True)
class SecureUpload:
    """A secure round's upload: SecAgg+ quantizes the masked vector itself, each coordinate
    by less than one step of ``quantizer``; ``extra`` coordinates (the summed metrics) ride
    behind the update in that vector."""

    quantizer: SecAggConfig
    extra: int = 0


@dataclass(frozen=True)
class Channel:
    """One round's wire forms over the shared group's ``shapes`` (see the module docstring)."""

    shapes: Mapping[str, tuple[int, ...]]
    download: str = "none"
    upload: str = "none"
    low_rank: LowRank | None = None
    secure: SecureUpload | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        for direction in (self.download, self.upload):
            if direction not in MODES:
                raise ValueError(f"compression must be one of {MODES}, got {direction!r}")
        if self.low_rank is not None:
            self.low_rank.check(self.shapes)

    # --- building -----------------------------------------------------------------------
    @classmethod
    def of(
        cls,
        config: Mapping[str, object],
        shapes: Mapping[str, tuple[int, ...]],
        secure: SecureUpload | None = None,
    ) -> Channel:
        """The channel a message's config names (``ValueError`` when it does not parse or
        the model cannot take it: no item table for a low rank, a rank not below its width)."""
        download, upload = exchange_modes(config)
        return cls(dict(shapes), download, upload, LowRank.of(config), secure)

    @classmethod
    def for_round(
        cls,
        shapes: Mapping[str, tuple[int, ...]],
        download: str,
        upload: str,
        *,
        rank: int = 0,
        seed: int = 0,
        server_round: int = 0,
    ) -> Channel:
        """The server's channel of training round ``server_round``: a low-rank round gets a
        fresh public basis, drawn from the run ``seed`` and the round."""
        low_rank = LowRank.for_round(rank, seed, server_round) if rank else None
        return cls(dict(shapes), download, upload, low_rank)

    @property
    def compressed(self) -> bool:
        return (self.download, self.upload) != ("none", "none")

    @property
    def sends_updates(self) -> bool:
        """Devices send Δ (compressed, low-rank or masked), not their float32 weights."""
        return self.compressed or self.low_rank is not None or self.secure is not None

    def config(self, *, train: bool) -> dict[str, str | int]:
        """What a message says about its forms: the compressions when either is set, and in
        a training message the low-rank form (its rank and basis seed)."""
        out: dict[str, str | int] = {}
        if self.compressed or self.low_rank is not None:
            out[keys.DOWNLOAD_COMPRESSION] = self.download
            out[keys.UPLOAD_COMPRESSION] = self.upload
        if train and self.low_rank is not None:
            out.update(self.low_rank.config())
        return out

    # --- down: the model ----------------------------------------------------------------
    def encode_model(self, arrays: Mapping[str, np.ndarray]) -> Arrays:
        """The model in the download's form (rounded to the nearest level: what the devices
        start from)."""
        return compress(arrays, self.download)

    def decode_model(self, payload: Mapping[str, np.ndarray]) -> Arrays:
        """float32 model arrays from a download payload (``PayloadError`` if it is not
        exactly the download's layout)."""
        return decompress(payload, self.download, self.shapes)

    # --- up: the contribution -----------------------------------------------------------
    def update_shapes(self) -> dict[str, tuple[int, ...]]:
        """The names and shapes of a device's update: the shared group's, the item table's
        as its factor in a low-rank round (what SecAgg+ masks, in this order)."""
        shapes = {k: tuple(v) for k, v in self.shapes.items()}
        return self.low_rank.shapes(shapes) if self.low_rank is not None else shapes

    def update_length(self) -> int:
        return sum(math.prod(shape) for shape in self.update_shapes().values())

    def update_layout(self) -> Layout | None:
        """Name → (shape, dtype) of an upload payload; ``None`` for float32 weights (the
        shared group's names and shapes, checked as such)."""
        if not self.sends_updates or self.secure is not None:
            return None
        return payload_layout(self.update_shapes(), self.upload)

    def margin(self, update: Mapping[str, np.ndarray]) -> tuple[float, float]:
        """(r, a): the upload's rounding moves ``update`` by at most r·‖update‖ + a."""
        if self.secure is not None:
            length = self.update_length() + self.secure.extra
            return 0.0, self.secure.quantizer.rounding_norm(length)
        if not self.sends_updates:
            return 0.0, 0.0  # float32 weights: nothing rounded
        return rounding_bound(update, self.upload)

    def clip_bound(self, clip_norm: float, update: Mapping[str, np.ndarray]) -> float:
        """The norm a device clips its (factored) update to so that, rounded by the upload,
        it stays within ``clip_norm``: (C − a) / (1 + r). ``ValueError`` when the rounding
        alone could exceed C."""
        relative, absolute = self.margin(update)
        bound = (clip_norm - absolute) / (1 + relative)
        if bound <= 0:
            form = "SecAgg+'s quantization" if self.secure is not None else f"{self.upload}"
            raise ValueError(
                f"clip norm {clip_norm} is within {form}'s rounding ({absolute:.3g} + "
                f"{relative:.3g}·‖Δ‖): raise the clip norm or the quantization's resolution"
                " (secagg-quantization-bits)"
            )
        return bound

    def factor(self, delta: Mapping[str, np.ndarray]) -> Arrays:
        """Δ in the update's names: the table's ΔE as its factor A = ΔE·Bᵀ in a low-rank
        round (exact for a table trained as A·B), else as it is."""
        return self.low_rank.factor(delta) if self.low_rank is not None else dict(delta)

    def expand(self, factored: Mapping[str, np.ndarray]) -> Arrays:
        """The inverse of :meth:`factor`: an update (or a sum of them) in the shared group's
        names, float64 for the table (ΔE = A·B)."""
        if self.low_rank is None:
            return dict(factored)
        return self.low_rank.expand(factored, self.shapes[TABLE][1])

    def encode_update(
        self,
        update: Mapping[str, np.ndarray],
        start: Mapping[str, np.ndarray],
        rng: np.random.Generator | None,
    ) -> Arrays:
        """The payload a device sends for its (factored, clipped) ``update`` of ``start``:
        float32 weights start + Δ, Δ in the upload's form (stochastic rounding from
        ``rng``), or, in a secure round, Δ unrounded (float64) for the masking."""
        if self.secure is not None:
            return {k: np.asarray(v, dtype=np.float64) for k, v in update.items()}
        if not self.sends_updates:
            return {
                k: (np.asarray(start[k], np.float64) + update[k]).astype(np.asarray(start[k]).dtype)
                for k in start
            }
        return compress(update, self.upload, rng)

    def decode_update(
        self, payload: Mapping[str, np.ndarray], start: Mapping[str, np.ndarray]
    ) -> Arrays:
        """The float32 model a reply's payload makes on the server's own exact ``start``
        (float64): its weights as they came, or ``start + Δ`` of a decoded (and expanded)
        update, so the download's rounding never enters the model. ``PayloadError``
        (a ``ValueError``) for a payload off the upload's layout."""
        if not self.sends_updates:
            return dict(payload)
        delta = self.expand(decompress(payload, self.upload, self.update_shapes()))
        return {k: (start[k] + delta[k]).astype(np.float32) for k in self.shapes}

    def noise_subspaces(self) -> dict[str, np.ndarray]:
        """Per array, a basis (orthonormal rows) whose row space holds every update of the
        round: the round's basis for the item table of a low-rank round, nothing otherwise
        (DP-FedAvg draws that array's noise there)."""
        if self.low_rank is None:
            return {}
        return {TABLE: self.low_rank.basis(self.shapes[TABLE][1])}

    def __repr__(self) -> str:
        low = f", colr-rank={self.low_rank.rank}" if self.low_rank is not None else ""
        return f"Channel(download={self.download}, upload={self.upload}{low})"
