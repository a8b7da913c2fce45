"""Compressed model exchange: the wire form of the shared group, each way, in fewer bytes.

Flower 1.42 sends arrays as they are, so a round moves the whole float32 shared group down to
every device and back. ``download-compression`` and ``upload-compression`` choose, per
direction, what travels instead:

* ``none`` — float32, as before;
* ``fp16`` — float16 (half the bytes; ~3 significant digits);
* ``int8`` — each row of a matrix (a vector: one row) as int8 codes in [−127, 127] times one
  float32 scale, ``scale = max|row| / 127`` (a quarter of the bytes plus 4 per row).

What is compressed: the **model** on the way down (rounded to the nearest level: the device
starts from the decoded model), and the device's **update** Δ = local − start on the way up,
never its weights. int8 uploads round *stochastically*, ``code = ⌊x / scale + U⌋`` with U
uniform on [0, 1), so the decoded update is unbiased, E[scale · code] = x: the average over a
cohort converges to the average of the exact updates (fp16 rounds to nearest: a relative
error of at most 2⁻¹¹, against int8's up to 1/254 of a row's largest entry). Whenever either
direction is compressed the device uploads Δ (float32 if uploads are not compressed), and
the server adds the decoded Δ to its own exact model, so the rounding of the download never
accumulates in the model. (Devices train and evaluate on the decoded model: the evaluation
measures the model they hold; ``model.npz`` and ``bundle.npz`` are the server's exact one.)

The layout (:func:`payload_layout`) is fixed by the mode and the shared shapes: an array
``name`` keeps its name and shape with the mode's dtype; ``int8`` adds ``name.scale`` of
shape (rows,). The device's guard and the server's validation check a payload against it
before anything decodes it (:func:`decompress` refuses any other name, shape, dtype, a
non-finite or negative scale, or a code of −128). Pure NumPy, no Flower or torch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

__all__ = [
    "MODES",
    "SCALE_SUFFIX",
    "PayloadError",
    "compress",
    "decompress",
    "layout_problem",
    "model_shapes",
    "payload_layout",
    "rounding_bound",
]

MODES = ("none", "fp16", "int8")
SCALE_SUFFIX = ".scale"
_LEVELS = 127  # int8 codes in [-127, 127]: symmetric, -128 unused
_DTYPES: dict[str, np.dtype] = {
    "none": np.dtype("<f4"), "fp16": np.dtype("<f2"), "int8": np.dtype("i1"),
}  # fmt: skip

Layout = dict[str, tuple[tuple[int, ...], np.dtype]]


class PayloadError(ValueError):
    """A compressed payload that does not follow its layout (names, shapes, dtypes, values)."""


def payload_layout(shapes: Mapping[str, tuple[int, ...]], mode: str) -> Layout:
    """Name → (shape, dtype) of every array of a payload of ``mode`` over ``shapes``."""
    _check_mode(mode)
    layout: Layout = {name: (tuple(shape), _DTYPES[mode]) for name, shape in shapes.items()}
    if mode == "int8":
        for name, shape in shapes.items():
            layout[name + SCALE_SUFFIX] = ((_rows(shape),), np.dtype("<f4"))
    return layout


def layout_problem(
    name: str, shape: tuple[int, ...], dtype: np.dtype | str, layout: Layout
) -> str | None:
    """What is wrong with array ``name`` of ``shape`` and ``dtype`` in a payload of
    ``layout``, or ``None``: the one check of the device's guard (on the array's declared
    shape and dtype, before any byte is decoded) and of :func:`decompress`."""
    if name not in layout:
        return f"array '{name}' is not in the shared group's compressed payload"
    expected_shape, expected_dtype = layout[name]
    if tuple(shape) != tuple(expected_shape) or np.dtype(dtype) != expected_dtype:
        return (
            f"array '{name}' is {np.dtype(dtype)}{list(shape)},"
            f" not {expected_dtype}{list(expected_shape)}"
        )
    return None


def rounding_bound(arrays: Mapping[str, np.ndarray], mode: str) -> tuple[float, float]:
    """(r, a) with ‖decode(compress(λ·x)) − λ·x‖ ≤ r·‖λ·x‖ + a for every λ ≥ 0, however the
    rounding falls: what a device under user-level DP clips with, to (C − a) / (1 + r), so
    that the update the server decodes is within C.

    int8: an entry moves by less than its row's scale max|row|/127, so the update by less
    than √(Σ_rows w·scale²) (w entries a row), a fixed multiple of ‖x‖ since the scales
    follow x. fp16: half a unit in the last place, 2⁻¹¹ of the value, or 2⁻²⁵ absolute
    among float16's subnormals. none: exact.
    """
    _check_mode(mode)
    if mode == "none":
        return 0.0, 0.0
    size = sum(int(np.size(a)) for a in arrays.values())
    if mode == "fp16":
        return 2.0**-11, 2.0**-25 * math.sqrt(size)
    norm2 = moved2 = 0.0
    for value in arrays.values():
        x = np.asarray(value, dtype=np.float64)
        rows = x.reshape(_rows(x.shape), -1)
        moved2 += float(
            rows.shape[1] * np.sum((np.abs(rows).max(axis=1, initial=0.0) / _LEVELS) ** 2)
        )
        norm2 += float(np.sum(rows * rows))
    return (math.sqrt(moved2 / norm2) if norm2 > 0 else 0.0), 0.0


def model_shapes(payload: Mapping[str, np.ndarray], mode: str) -> dict[str, tuple[int, ...]]:
    """The shared shapes a payload of ``mode`` carries: its arrays', the int8 scales aside."""
    _check_mode(mode)
    return {
        name: tuple(np.shape(value))
        for name, value in payload.items()
        if not (mode == "int8" and name.endswith(SCALE_SUFFIX))
    }


def compress(
    arrays: Mapping[str, np.ndarray], mode: str, rng: np.random.Generator | None = None
) -> dict[str, np.ndarray]:
    """The payload of ``arrays`` in ``mode``. ``rng``: stochastic rounding (unbiased, for an
    update); without one, rounding to the nearest level (for the model)."""
    _check_mode(mode)
    out: dict[str, np.ndarray] = {}
    for name, value in arrays.items():
        x = np.asarray(value, dtype=np.float32)
        if not np.isfinite(x).all():
            raise PayloadError(f"array '{name}' is not finite: nothing to compress")
        if mode == "none":
            out[name] = x
        elif mode == "fp16":
            if np.abs(x).max(initial=0.0) > np.finfo(np.float16).max:
                raise PayloadError(f"array '{name}' exceeds float16's range (65504)")
            out[name] = x.astype(np.float16)
        else:
            out[name], out[name + SCALE_SUFFIX] = _int8(x, rng)
    return out


def decompress(
    payload: Mapping[str, np.ndarray], mode: str, shapes: Mapping[str, tuple[int, ...]]
) -> dict[str, np.ndarray]:
    """float32 arrays of the shared group from a payload of ``mode``; :class:`PayloadError`
    for anything that is not exactly the layout of ``mode`` over ``shapes``."""
    layout = payload_layout(shapes, mode)
    arrays = {name: np.asarray(value) for name, value in payload.items()}
    missing = sorted(set(layout) - set(arrays))
    problems = [f"missing {missing}"] if missing else []
    problems += [
        problem
        for name, value in arrays.items()
        if (problem := layout_problem(name, value.shape, value.dtype, layout))
    ]
    if problems:
        raise PayloadError(f"{mode} payload: " + "; ".join(problems))
    out: dict[str, np.ndarray] = {}
    for name, shape in shapes.items():
        if mode != "int8":
            value = arrays[name].astype(np.float32)
            if not np.isfinite(value).all():
                raise PayloadError(f"{mode} payload '{name}' is not finite")
            out[name] = value
            continue
        codes, scales = arrays[name], arrays[name + SCALE_SUFFIX]
        if not (np.isfinite(scales).all() and (scales >= 0).all()):
            raise PayloadError(f"int8 payload '{name}{SCALE_SUFFIX}': scales must be finite, ≥ 0")
        if codes.size and int(codes.min()) < -_LEVELS:
            raise PayloadError(f"int8 payload '{name}': code −128 is outside [−127, 127]")
        rows = codes.reshape(_rows(shape), -1).astype(np.float32)
        with np.errstate(over="ignore"):
            value = (rows * scales[:, None]).reshape(shape)
        if not np.isfinite(value).all():  # a scale near float32's largest, times 127
            raise PayloadError(f"int8 payload '{name}' decodes to infinite values")
        out[name] = value
    return out


def _int8(x: np.ndarray, rng: np.random.Generator | None) -> tuple[np.ndarray, np.ndarray]:
    rows = x.reshape(_rows(x.shape), -1).astype(np.float64)
    scales = np.abs(rows).max(axis=1, initial=0.0) / _LEVELS
    safe = np.where(scales > 0, scales, 1.0)[:, None]
    # nearest, or ⌊x/s + U⌋ (E = x/s; |x/s| ≤ 127 keeps it in range)
    codes = np.rint(rows / safe) if rng is None else np.floor(rows / safe + rng.random(rows.shape))
    codes = np.clip(codes, -_LEVELS, _LEVELS).astype(np.int8).reshape(x.shape)
    return codes, scales.astype(np.float32)


def _rows(shape: tuple[int, ...]) -> int:
    """Rows of an array's int8 scales: the first axis of a matrix, one for a vector."""
    return int(shape[0]) if len(shape) >= 2 else 1


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"compression must be one of {MODES}, got {mode!r}")
