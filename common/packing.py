"""A message's arrays as one Flower object on the wire of a deployment.

Flower 1.42 sends a message as a tree of objects (the message, its records, each Array and
each Array's chunks), and a SuperNode pulls and pushes every object in an HTTPS request of
its own that the SuperLink authenticates (an ECDSA signature check each). fedrec's model is
seven arrays: a message of it is ~18 objects, and on a 2-core machine with 20 devices those
requests were most of the SuperLink's and the SuperNodes' CPU. :func:`pack` replaces each
ArrayRecord of several arrays by one array of their bytes (``PACKED``) and records the layout
(names, dtypes, shapes, in order) in a ConfigRecord beside it; :func:`unpack` restores the
record exactly (same names, order, dtypes, shapes, values). The server packs what it sends and
unpacks what it receives (``server/grid.py``: ``PackingGrid``); a device unpacks on arrival
and packs its reply (``client/mods.py``: ``packing_mod``), before any other layer sees it.
The simulation's in-memory grid sends no object over HTTP and packs nothing.
"""

from __future__ import annotations

import json

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from fedrec.common.records import array_of, to_numpy

__all__ = ["LAYOUT_PREFIX", "PACKED", "PackingError", "is_packed", "pack", "unpack"]

PACKED = "packed"  # the one array of a packed record
LAYOUT_PREFIX = "packed-layout/"  # + the record's name: its ConfigRecord of layout
_LAYOUT = "layout"


class PackingError(ValueError):
    """A packed record whose layout does not describe its bytes."""


def is_packed(content: RecordDict) -> bool:
    return any(name.startswith(LAYOUT_PREFIX) for name in content.config_records)


def pack(content: RecordDict) -> RecordDict:
    """``content`` with every ArrayRecord of two or more arrays as one array (a new
    RecordDict: ``content`` is not changed). Anything else is carried as it is."""
    out = RecordDict()
    for name, record in content.items():
        if isinstance(record, ArrayRecord) and len(record) > 1:
            arrays = {k: np.asarray(to_numpy(v), order="C") for k, v in record.items()}
            layout = [[k, a.dtype.str, list(a.shape)] for k, a in arrays.items()]
            data = b"".join(a.tobytes() for a in arrays.values())
            out[name] = ArrayRecord({PACKED: array_of(np.frombuffer(data, dtype=np.uint8))})
            out[LAYOUT_PREFIX + name] = ConfigRecord({_LAYOUT: json.dumps(layout)})
        else:
            out[name] = record
    return out


def unpack(content: RecordDict) -> RecordDict:
    """The RecordDict :func:`pack` was given (a new one); content without a packed record
    comes back as it is. PackingError if a layout does not describe its bytes."""
    if not is_packed(content):
        return content
    out = RecordDict()
    for name, record in content.items():
        if name.startswith(LAYOUT_PREFIX):
            continue
        layout = content.config_records.get(LAYOUT_PREFIX + name)
        out[name] = record if layout is None else _unpacked(name, record, layout)
    return out


def _unpacked(name: str, record: object, layout: ConfigRecord) -> ArrayRecord:
    if not isinstance(record, ArrayRecord) or list(record) != [PACKED]:
        raise PackingError(f"record {name!r} has a packing layout but is not one packed array")
    data = to_numpy(record[PACKED])
    try:
        entries = json.loads(str(layout[_LAYOUT]))
        arrays: dict[str, Array] = {}
        offset = 0
        for key, dtype, shape in entries:
            kind = np.dtype(dtype)
            size = kind.itemsize * int(np.prod(shape, dtype=np.int64))
            if offset + size > data.size:
                raise PackingError(f"record {name!r}: the layout needs more bytes than it has")
            value = data[offset : offset + size].view(kind).reshape(shape)
            arrays[str(key)] = array_of(value)
            offset += size
    except PackingError:
        raise
    except (KeyError, TypeError, ValueError) as err:
        raise PackingError(f"record {name!r}: its packing layout does not parse: {err}") from err
    if offset != data.size:
        raise PackingError(f"record {name!r}: {data.size - offset} bytes beyond its layout")
    return ArrayRecord(arrays)
