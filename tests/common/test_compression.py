"""Tests for fedrec.common.compression: the wire forms, their layouts and their rounding."""

from __future__ import annotations

import numpy as np
import pytest

from fedrec.common.compression import (
    SCALE_SUFFIX,
    PayloadError,
    compress,
    decompress,
    payload_layout,
    rounding_bound,
)

SHAPES = {"table": (300, 16), "tower": (16, 20), "bias": (16,), "head.bias": (1,)}


def _update(seed: int = 0, scale: float = 1e-2) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: (scale * rng.standard_t(3, size=s)).astype(np.float32) for k, s in SHAPES.items()}


def _norm(arrays: dict[str, np.ndarray]) -> float:
    return float(np.sqrt(sum(np.sum(np.asarray(a, np.float64) ** 2) for a in arrays.values())))


@pytest.mark.parametrize("mode", ["none", "fp16", "int8"])
def test_a_payload_has_exactly_its_layout_and_decodes_close(mode: str) -> None:
    x = _update()
    payload = compress(x, mode)
    layout = payload_layout(SHAPES, mode)
    assert {k: (v.shape, v.dtype) for k, v in payload.items()} == layout
    back = decompress(payload, mode, SHAPES)
    assert all(back[k].dtype == np.float32 and back[k].shape == s for k, s in SHAPES.items())
    error = _norm({k: back[k] - x[k] for k in x})
    relative, absolute = rounding_bound(x, mode)
    assert error <= relative * _norm(x) + absolute + 1e-9
    if mode == "int8":  # nearest rounding: within half a level of each row's scale
        for k, s in SHAPES.items():
            rows = x[k].reshape(s[0] if len(s) == 2 else 1, -1)
            scale = np.abs(rows).max(axis=1) / 127
            moved = np.abs(back[k].reshape(rows.shape) - rows)
            assert (moved <= scale[:, None] / 2 + 1e-9).all()


def test_int8_is_a_quarter_of_the_bytes_and_fp16_a_half() -> None:
    x = _update()
    dense = sum(v.nbytes for v in compress(x, "none").values())
    assert sum(v.nbytes for v in compress(x, "fp16").values()) == dense / 2
    int8 = sum(v.nbytes for v in compress(x, "int8").values())
    rows = 300 + 16 + 1 + 1
    assert int8 == dense / 4 + 4 * rows  # one float32 scale a row


def test_stochastic_rounding_is_unbiased_and_nearest_is_not() -> None:
    """The mean of many stochastic encodings of one update converges to it (within 5 σ of
    the mean of n uniform roundings, σ ≤ scale / (2√n)); nearest rounding stays off."""
    x = {"w": np.array([[0.3, -1.0, 0.004, 0.5013]], np.float32)}  # scale 1/127
    rng = np.random.default_rng(7)
    n = 4000
    mean = np.mean([decompress(compress(x, "int8", rng), "int8", {"w": (1, 4)})["w"]
                    for _ in range(n)], axis=0)  # fmt: skip
    scale = 1.0 / 127
    assert np.abs(mean - x["w"]).max() < 5 * scale / (2 * np.sqrt(n))
    nearest = decompress(compress(x, "int8"), "int8", {"w": (1, 4)})["w"]
    assert np.abs(nearest - x["w"])[0, 2] > 0.4 * scale  # 0.004 rounds to 0 every time


def test_rounding_bound_holds_for_every_scaling_and_draw() -> None:
    """A device clips Δ to (C − a)/(1 + r): the decoded update then never exceeds C."""
    x = _update(3)
    for mode in ("fp16", "int8"):
        relative, absolute = rounding_bound(x, mode)
        assert 0 < relative < (0.08 if mode == "int8" else 1e-3)
        for c in (1e-3, 0.5, 3.0):
            clip = (c - absolute) / (1 + relative)
            scaled = {k: v * (clip / _norm(x)) for k, v in x.items()}
            for seed in range(20):
                rng = np.random.default_rng(seed)
                back = decompress(compress(scaled, mode, rng), mode, SHAPES)
                assert _norm(back) <= c * (1 + 1e-6)


class _Adversary:
    """A 'random' U that makes every int8 entry round away from zero by almost a level: the
    draw that moves an update's norm the most, the case the bound must cover."""

    def __init__(self, x: dict[str, np.ndarray]) -> None:
        rows = [
            np.asarray(v, np.float64).reshape(len(v) if v.ndim == 2 else 1, -1) for v in x.values()
        ]
        self.signs = iter([np.sign(r) for r in rows])

    def random(self, shape: tuple[int, ...]) -> np.ndarray:
        sign = next(self.signs)
        return np.where(sign > 0, 1 - 1e-9, 0.0) * np.ones(shape)


def test_the_rounding_bound_holds_against_the_worst_draw() -> None:
    """Every entry moves away from zero by almost one level (U → 1 for positives, U = 0 for
    negatives): the decoded norm grows the most it can, and stays within C; a bound eight
    times smaller would be broken by this draw (the bound is ‖error‖, the norm grows by
    its projection: conservative, at a cost of r ≈ 3-7 % of the clip)."""
    x = _update(5)
    relative, _ = rounding_bound(x, "int8")
    c = 0.5
    scaled = {k: v * (c / (1 + relative) / _norm(x)) for k, v in x.items()}
    back = decompress(compress(scaled, "int8", _Adversary(scaled)), "int8", SHAPES)  # type: ignore[arg-type]
    assert _norm(back) <= c * (1 + 1e-6)
    halved = {k: v * (c / (1 + relative / 8) / _norm(x)) for k, v in x.items()}
    back = decompress(compress(halved, "int8", _Adversary(halved)), "int8", SHAPES)  # type: ignore[arg-type]
    assert _norm(back) > c  # within 8x of what this draw takes


def test_a_payload_off_its_layout_is_refused_before_decoding() -> None:
    good = compress(_update(), "int8")
    bad = {
        "missing scale": {k: v for k, v in good.items() if k != "table" + SCALE_SUFFIX},
        "extra array": {**good, "user_embedding.weight": np.zeros((1, 16), np.int8)},
        "wrong dtype": {**good, "table": good["table"].astype(np.int16)},
        "wrong shape": {**good, "table": good["table"][:-1]},
        "negative scale": {**good, "bias" + SCALE_SUFFIX: np.array([-1.0], np.float32)},
        "NaN scale": {**good, "bias" + SCALE_SUFFIX: np.array([np.nan], np.float32)},
        "code -128": {**good, "bias": np.full(16, -128, np.int8)},
    }
    for what, payload in bad.items():
        with pytest.raises(PayloadError, match="int8 payload"):
            decompress(payload, "int8", SHAPES)
            pytest.fail(f"{what} was decoded")
    huge = {
        **good,
        "bias" + SCALE_SUFFIX: np.array([3e38], np.float32),
        "bias": np.full(16, 127, np.int8),
    }
    with pytest.raises(PayloadError, match="decodes to infinite values"):
        decompress(huge, "int8", SHAPES)
    with pytest.raises(PayloadError, match="not finite"):
        fp16 = compress(_update(), "fp16")
        decompress({**fp16, "bias": np.full(16, np.inf, np.float16)}, "fp16", SHAPES)
    with pytest.raises(PayloadError, match="float16's range"):
        compress({"w": np.array([1e5], np.float32)}, "fp16")
    with pytest.raises(PayloadError, match="not finite"):
        compress({"w": np.array([np.nan], np.float32)}, "int8")
    with pytest.raises(ValueError, match="compression must be one of"):
        payload_layout(SHAPES, "int4")
