"""The server's end of the compressed exchange (:mod:`fedrec.common.compression`).

With ``download-compression`` or ``upload-compression`` set, the round driver
(``server/recorder.py``) sends every model — to each training cohort and to every evaluated
node — in the download's form (:meth:`Exchange.encode`: rounded to the nearest level, once
per round), and every training reply carries the device's update Δ in the upload's form.
:meth:`Exchange.decode` checks a reply's payload against its exact layout (names, shapes,
dtypes, finite non-negative scales) and replaces it with ``global + Δ`` in float32, the
server's own exact model plus the decoded update, so everything after it (validation, norm
bounding, DP-FedAvg's clip and noise, the server step) sees the replies it always saw; a
payload that does not decode is refused (reason ``payload``) like any malformed reply.

Under SecAgg+ the devices' updates never arrive one by one: the download is compressed as
above, and ``upload-compression = "int8"`` makes SecAgg+'s own quantization compact
(``SecAggSettings.compact``: sums in Z_{2^16}, 2 bytes a coordinate, with as many bits as
the cohort leaves) instead of quantizing twice.

With ``colr-rank`` r (CoLR, :mod:`fedrec.common.colr`) every training round gets a fresh
public basis (:meth:`Exchange.start_round` names it in the train messages), the devices send
the item table's update as its rank-r factor, and :meth:`Exchange.decode` expands it before
anything else sees the reply; under SecAgg+ the grid sums the factors and expands the sum.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, Message

from fedrec.common import keys
from fedrec.common.colr import TABLE, LowRank
from fedrec.common.compression import compress, decompress
from fedrec.common.fedconfig import FederationConfig
from fedrec.common.records import arrays_of, numpy_arrays
from fedrec.common.secagg.grid import secure_sum
from fedrec.server.validation import ARRAY_ERRORS, Refusal

__all__ = ["Exchange"]


class Exchange:
    """Encodes the models the server sends and decodes the updates it receives."""

    def __init__(
        self,
        download: str,
        upload: str,
        shapes: Mapping[str, tuple[int, ...]],
        *,
        rank: int = 0,
        seed: int = 0,
    ) -> None:
        self.download = download
        self.upload = upload
        self.shapes = dict(shapes)
        self.rank = rank  # CoLR: the table's update as a rank-r factor (0: dense)
        self.seed = seed  # the run seed the rounds' bases are drawn from
        self.low_rank: LowRank | None = None  # this training round's form

    @classmethod
    def of(cls, config: FederationConfig, shapes: Mapping[str, tuple[int, ...]]) -> Exchange | None:
        """The run's exchange, or ``None`` when devices send weights (nothing compressed,
        no low rank)."""
        if not config.exchanges_updates:
            return None
        return cls(
            config.download_compression,
            config.upload_compression,
            shapes,
            rank=config.colr_rank,
            seed=config.seed,
        )

    def start_round(self, messages: list[Message], server_round: int) -> None:
        """A training round: with a low rank, draw its fresh basis and name it in every
        train message (what the devices train against and the updates are decoded with)."""
        if not self.rank:
            return
        self.low_rank = LowRank.for_round(self.rank, self.seed, server_round)
        for message in messages:
            if message.has_content() and keys.CONFIG in message.content.config_records:
                config = message.content.config_records[keys.CONFIG]
                for key, value in self.low_rank.config().items():
                    config[key] = value

    def subspaces(self) -> dict[str, np.ndarray]:
        """Per array, a basis whose row space holds every decoded update of this round:
        the round's basis for the item table of a low-rank round (DP-FedAvg draws its noise
        there), nothing otherwise."""
        if self.low_rank is None:
            return {}
        return {TABLE: self.low_rank.basis(self.shapes[TABLE][1])}

    def config(self) -> dict[str, str]:
        """What every model message says about its form (the device decodes by it)."""
        return {keys.DOWNLOAD_COMPRESSION: self.download, keys.UPLOAD_COMPRESSION: self.upload}

    def encode(self, arrays: ArrayRecord) -> ArrayRecord:
        """The model in the download's form (nearest rounding: a device's start point)."""
        payload = compress(numpy_arrays(arrays), self.download)
        return ArrayRecord({name: Array(value) for name, value in payload.items()})

    def encode_messages(self, messages: list[Message], arrays: ArrayRecord) -> None:
        """Put the encoded ``arrays`` into every message that carries the model (encoded
        once: every message of a round carries the same model)."""
        encoded: ArrayRecord | None = None
        for message in messages:
            if message.has_content() and keys.ARRAYS in message.content:
                encoded = encoded or self.encode(arrays)
                message.content[keys.ARRAYS] = encoded

    def decode(self, reply: Message, global_: Mapping[str, np.ndarray]) -> Refusal | None:
        """Replace a train reply's payload with ``global + Δ`` (float32); or why it cannot.

        A secure round's one reply (``SecureAggregationGrid``: the decoded model the devices
        started from plus their mean update, in the server's float64) becomes the exact model
        plus that mean update: the download's rounding never enters the model."""
        if secure_sum(reply)[1]:  # built by the server's own secure grid, not a device
            started = decompress(compress(dict(global_), self.download), self.download, self.shapes)
            summed = numpy_arrays(arrays_of(reply.content))
            reply.content[keys.ARRAYS] = ArrayRecord(
                {k: Array(global_[k] + (summed[k] - started[k])) for k in self.shapes}
            )
            return None
        low_rank = self.low_rank
        shapes = low_rank.shapes(self.shapes) if low_rank is not None else self.shapes
        try:  # PayloadError is a ValueError: the layout, and the bytes themselves
            delta = decompress(numpy_arrays(arrays_of(reply.content)), self.upload, shapes)
        except ARRAY_ERRORS as err:
            return Refusal("payload", f"{type(err).__name__}: {err}")
        if low_rank is not None:  # ΔE = A·B
            delta = low_rank.expand(delta, self.shapes[TABLE][1])
        reply.content[keys.ARRAYS] = ArrayRecord(
            {k: Array((global_[k] + delta[k]).astype(np.float32)) for k in self.shapes}
        )
        return None

    def __repr__(self) -> str:
        low = f", colr-rank={self.rank}" if self.rank else ""
        return f"Exchange(download={self.download}, upload={self.upload}{low})"
