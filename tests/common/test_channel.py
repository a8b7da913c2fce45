"""Tests for fedrec.common.channel: one round's wire forms, both ways, and their margins."""

from __future__ import annotations

import math

import numpy as np
import pytest
from flwr.app import ConfigRecord
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays as np_arrays

from fedrec.common import keys
from fedrec.common.channel import Channel, SecureUpload
from fedrec.common.colr import FACTOR, TABLE, LowRank
from fedrec.common.compression import PayloadError, compress, decompress
from fedrec.common.privacy import clip_update, global_norm
from fedrec.common.secagg.primitives import SecAggSettings, dequantize_sum, flatten, quantize

SHAPES = {TABLE: (5, 4), "head.bias": (1,)}  # 21 coordinates; a rank-2 factor: 5·2 + 1 = 11
LOW = LowRank(2, 9)
# one quantization step of 2c/Q = 2/2^6 = 1/32 (c = 1, Q = 64): SecAgg+ moves each
# coordinate by less than that
QUANTIZER = SecAggSettings(clip_range=1.0, quantization_bits=6).for_round(5)
# float32 on the wire: a decoded coordinate may sit 2^-24 (relative) off the float64 value the
# margin was computed for; 1e-6 covers that and stays far below every margin tested (≥ 2^-11)
WIRE = 1e-6

Arrays = dict[str, np.ndarray]


def _norm(arrays: dict[str, np.ndarray]) -> float:
    return global_norm({k: np.asarray(v, np.float64) for k, v in arrays.items()})


def _model() -> Arrays:
    table = np.array(
        [[0.304, -1.27, 0.0, 0.616], [1.0, 2.0, 3.0, 4.0], [0.1, 0.2, 0.3, 0.4],
         [-5.0, 0.0, 5.0, 2.4], [0.0, 0.0, 0.0, 0.0]],
        np.float32,
    )  # fmt: skip
    return {TABLE: table, "head.bias": np.array([0.5], np.float32)}


def _update(seed: int, scale: float = 1.0) -> Arrays:
    rng = np.random.default_rng(seed)
    return {k: scale * rng.standard_t(3, size=s) for k, s in SHAPES.items()}  # heavy-tailed


# --- building --------------------------------------------------------------------------------
def test_of_parses_a_messages_compressions_and_low_rank() -> None:
    plain = Channel.of({}, SHAPES)
    assert (plain.download, plain.upload, plain.low_rank) == ("none", "none", None)
    assert not plain.compressed and not plain.sends_updates
    config = {keys.DOWNLOAD_COMPRESSION: "int8", keys.UPLOAD_COMPRESSION: "fp16"}
    both = Channel.of(config, SHAPES)
    assert (both.download, both.upload, both.low_rank) == ("int8", "fp16", None)
    assert both.compressed and both.sends_updates
    low = Channel.of({keys.COLR_RANK: 2, keys.COLR_SEED: 9}, SHAPES)
    assert low.low_rank == LOW and not low.compressed and low.sends_updates
    secure = Channel.of({}, SHAPES, SecureUpload(QUANTIZER))
    assert secure.secure == SecureUpload(QUANTIZER) and secure.sends_updates


@pytest.mark.parametrize(
    ("config", "shapes", "problem"),
    [
        ({keys.UPLOAD_COMPRESSION: "int4"}, SHAPES, "compression must be one of .* got 'int4'"),
        ({keys.DOWNLOAD_COMPRESSION: "zip"}, SHAPES, "compression must be one of .* got 'zip'"),
        ({keys.COLR_RANK: 4, keys.COLR_SEED: 9}, SHAPES, r"colr-rank 4 must be in \[1, 4\)"),
        ({keys.COLR_RANK: 5, keys.COLR_SEED: 9}, SHAPES, r"colr-rank 5 must be in \[1, 4\)"),
        ({keys.COLR_RANK: 0, keys.COLR_SEED: 9}, SHAPES, "colr-rank is 0"),
        ({keys.COLR_RANK: 2}, SHAPES, "colr-seed is None: a low-rank round needs its seed"),
        ({keys.COLR_RANK: 2, keys.COLR_SEED: 9}, {"head.bias": (1,)}, "needs the item table"),
    ],
    ids=["unknown-upload", "unknown-download", "rank-is-width", "rank-past-width", "rank-0",
         "no-seed", "no-table"],
)  # fmt: skip
def test_of_refuses_a_config_naming_the_problem(
    config: dict[str, object], shapes: dict[str, tuple[int, ...]], problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        Channel.of(config, shapes)


def test_config_names_the_forms_and_only_a_train_message_the_low_rank() -> None:
    assert Channel(SHAPES).config(train=True) == {}  # float32 both ways: nothing to say
    compressed = Channel(SHAPES, "int8", "none")
    expected = {keys.DOWNLOAD_COMPRESSION: "int8", keys.UPLOAD_COMPRESSION: "none"}
    assert compressed.config(train=True) == compressed.config(train=False) == expected
    low = Channel(SHAPES, "none", "int8", LOW)
    modes = {keys.DOWNLOAD_COMPRESSION: "none", keys.UPLOAD_COMPRESSION: "int8"}
    assert low.config(train=True) == {**modes, keys.COLR_RANK: 2, keys.COLR_SEED: 9}
    assert low.config(train=False) == modes  # an evaluation sends no update
    # what one end writes, the other reads back (as a message's ConfigRecord)
    for channel in (Channel(SHAPES), compressed, low, Channel(SHAPES, low_rank=LOW)):
        assert Channel.of(ConfigRecord(channel.config(train=True)), SHAPES) == channel


def test_for_round_draws_a_fresh_reproducible_basis_each_round() -> None:
    third = Channel.for_round(SHAPES, "none", "int8", rank=2, seed=0, server_round=3)
    assert third.low_rank == LowRank.for_round(2, 0, 3)
    again = Channel.for_round(SHAPES, "none", "int8", rank=2, seed=0, server_round=3)
    fourth = Channel.for_round(SHAPES, "none", "int8", rank=2, seed=0, server_round=4)
    assert again == third and fourth.low_rank is not None
    assert fourth.low_rank.seed != third.low_rank.seed  # type: ignore[union-attr]
    assert Channel.for_round(SHAPES, "int8", "none", rank=0).low_rank is None


# --- down: the model -------------------------------------------------------------------------
def test_a_float32_model_travels_exactly() -> None:
    channel = Channel(SHAPES)
    back = channel.decode_model(channel.encode_model(_model()))
    for k, v in _model().items():
        assert back[k].dtype == np.float32
        np.testing.assert_array_equal(back[k], v)


def test_an_int8_model_rounds_each_row_to_its_nearest_level() -> None:
    channel = Channel(SHAPES, "int8", "none")
    payload = channel.encode_model(_model())
    back = channel.decode_model(payload)
    # row 0: scale = 1.27/127 = 0.01, codes rint([30.4, −127, 0, 61.6]) = [30, −127, 0, 62]
    assert payload[TABLE][0].tolist() == [30, -127, 0, 62]
    np.testing.assert_allclose(back[TABLE][0], [0.30, -1.27, 0.0, 0.62], atol=1e-6)
    # row 4 is all zero: scale 0, decoded exactly; every entry within half its row's scale
    assert not back[TABLE][4].any()
    scales = np.abs(_model()[TABLE]).max(axis=1) / 127
    assert (np.abs(back[TABLE] - _model()[TABLE]) <= scales[:, None] / 2 + 1e-7).all()
    np.testing.assert_allclose(back["head.bias"], [0.5], atol=1e-7)  # one row: code 127


def test_an_fp16_model_is_within_half_a_unit_in_the_last_place() -> None:
    channel = Channel(SHAPES, "fp16", "none")
    back = channel.decode_model(channel.encode_model(_model()))
    for k, v in _model().items():
        assert back[k].dtype == np.float32
        assert (np.abs(back[k] - v) <= 2.0**-11 * np.abs(v)).all()  # normal range: 2^-11
    assert back[TABLE][0, 0] != np.float32(0.304)  # 0.304 is not a float16: it did round


def test_a_model_off_the_downloads_layout_is_refused() -> None:
    with pytest.raises(PayloadError, match="int8 payload"):
        Channel(SHAPES, "int8", "none").decode_model(_model())  # float32, no scales


# --- up: the update's names, shapes and layout -----------------------------------------------
def test_float32_weights_have_no_update_layout() -> None:
    channel = Channel(SHAPES)
    assert not channel.sends_updates and channel.update_layout() is None
    assert channel.update_shapes() == SHAPES and channel.update_length() == 21


def test_a_compressed_upload_has_the_modes_layout() -> None:
    f4, i1 = np.dtype("<f4"), np.dtype("i1")
    assert Channel(SHAPES, "none", "int8").update_layout() == {
        TABLE: ((5, 4), i1), TABLE + ".scale": ((5,), f4),
        "head.bias": ((1,), i1), "head.bias.scale": ((1,), f4),
    }  # fmt: skip
    # a compressed download alone: Δ goes up as float32
    assert Channel(SHAPES, "int8", "none").update_layout() == {
        TABLE: ((5, 4), f4),
        "head.bias": ((1,), f4),
    }


def test_a_low_rank_upload_sends_the_factor_in_place_of_the_table() -> None:
    channel = Channel(SHAPES, low_rank=LOW)
    assert list(channel.update_shapes().items()) == [(FACTOR, (5, 2)), ("head.bias", (1,))]
    assert channel.update_length() == 11
    assert channel.update_layout() == {
        FACTOR: ((5, 2), np.dtype("<f4")),
        "head.bias": ((1,), np.dtype("<f4")),
    }


def test_a_secure_upload_is_masked_so_it_has_no_payload_layout() -> None:
    secure = Channel(SHAPES, secure=SecureUpload(QUANTIZER, extra=5))
    assert secure.update_layout() is None and secure.update_shapes() == SHAPES
    low = Channel(SHAPES, low_rank=LOW, secure=SecureUpload(QUANTIZER, extra=5))
    assert low.update_shapes() == {FACTOR: (5, 2), "head.bias": (1,)} and low.update_length() == 11


# --- the margin and the clip bound -----------------------------------------------------------
def test_the_margins_of_each_form_pinned() -> None:
    uniform = {TABLE: np.full((5, 4), 2.0), "head.bias": np.array([2.0])}
    assert Channel(SHAPES).margin(uniform) == (0.0, 0.0)
    assert Channel(SHAPES).clip_bound(0.5, uniform) == 0.5  # float32 weights: C itself
    # int8: each entry moves < its row's scale max|row|/127; a uniform Δ moves by < ‖Δ‖/127
    # (Σ_rows w·scale² = 21·(2/127)², ‖Δ‖² = 21·2²), so the bound is C/(1 + 1/127) = 127/128·C
    int8 = Channel(SHAPES, "none", "int8")
    assert int8.margin(uniform) == pytest.approx((1 / 127, 0.0), rel=1e-12)
    assert int8.clip_bound(1.0, uniform) == pytest.approx(127 / 128, rel=1e-12)
    # a lone entry in a row of 4 counts 4 times: row [3, 0, 0, 0] and bias [4] move by
    # √(4·(3/127)² + (4/127)²) = √52/127 against ‖Δ‖ = 5
    sparse = {TABLE: np.zeros((5, 4)), "head.bias": np.array([4.0])}
    sparse[TABLE][0, 0] = 3.0
    assert int8.margin(sparse)[0] == pytest.approx(math.sqrt(52) / (5 * 127), rel=1e-12)
    # fp16: half a unit in the last place, 2^-11 relative, 2^-25 absolute (subnormals)
    fp16 = Channel(SHAPES, "none", "fp16")
    assert fp16.margin(uniform) == (2.0**-11, 2.0**-25 * math.sqrt(21))
    assert fp16.clip_bound(1.0, uniform) == (1 - 2.0**-25 * math.sqrt(21)) / (1 + 2.0**-11)


def test_a_secure_uploads_margin_is_the_quantizers_rounding_norm() -> None:
    """SecAgg+ moves each of the vector's coordinates (the update's, then ``extra`` metrics)
    by < one step: a = step·√(length + extra)."""
    secure = Channel(SHAPES, secure=SecureUpload(QUANTIZER, extra=5))
    assert secure.margin({}) == (0.0, math.sqrt(26) / 32)  # 21 + 5 coordinates
    assert secure.clip_bound(0.5, {}) == pytest.approx(0.5 - math.sqrt(26) / 32)  # 0.34066
    low = Channel(SHAPES, low_rank=LOW, secure=SecureUpload(QUANTIZER, extra=5))
    assert low.margin({}) == (0.0, 0.125)  # √(11 + 5)/32 = 4/32
    assert low.clip_bound(0.5, {}) == 0.375


@pytest.mark.parametrize(
    ("channel", "clip", "problem"),
    [
        (Channel(SHAPES, secure=SecureUpload(QUANTIZER, 5)), 0.15, "SecAgg\\+'s quantization"),
        (Channel(SHAPES, secure=SecureUpload(QUANTIZER)), math.sqrt(21) / 32, "quantization"),
        (Channel(SHAPES, "none", "fp16"), 1e-7, "within fp16's rounding"),  # a = 1.37e-7
    ],
    ids=["secure", "secure-exactly-a", "fp16-subnormal"],
)  # fmt: skip
def test_clip_bound_refuses_a_clip_the_rounding_alone_could_exceed(
    channel: Channel, clip: float, problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        channel.clip_bound(clip, _update(0))


FORMS = {
    "weights": Channel(SHAPES),
    "fp16": Channel(SHAPES, "none", "fp16"),
    "int8": Channel(SHAPES, "int8", "int8"),
    "low-rank": Channel(SHAPES, low_rank=LOW),
    "low-rank-int8": Channel(SHAPES, "none", "int8", LOW),
    "low-rank-fp16": Channel(SHAPES, "fp16", "fp16", LOW),
}
ZERO = {k: np.zeros(s) for k, s in SHAPES.items()}
UPDATES = st.fixed_dictionaries(
    {
        TABLE: np_arrays(np.float64, (5, 4), elements=st.floats(-1e3, 1e3)),
        "head.bias": np_arrays(np.float64, (1,), elements=st.floats(-1e3, 1e3)),
    }
)


def _sent(channel: Channel, delta: Arrays, clip: float, seed: int) -> Arrays:
    """What the device does (client/exchange.py): factor, clip once to the channel's bound
    for C, encode; and what the server decodes from it, as an update of the model 0."""
    factored = channel.factor(delta)
    clipped, _ = clip_update(factored, channel.clip_bound(clip, factored))
    payload = channel.encode_update(clipped, ZERO, np.random.default_rng(seed))
    return channel.decode_update(payload, ZERO)


@pytest.mark.parametrize("form", list(FORMS))
@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    delta=UPDATES,
    clip=st.floats(1e-3, 50.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_an_update_clipped_to_the_bound_decodes_within_c(
    form: str, delta: Arrays, clip: float, seed: int
) -> None:
    assert _norm(_sent(FORMS[form], delta, clip, seed)) <= clip * (1 + WIRE)


def test_clipping_to_c_itself_lets_the_int8_rounding_exceed_c() -> None:
    """The other side of the bound (this test can fail): clipped to C and rounded, some
    upload decodes longer than C; clipped to the channel's bound, none does."""
    channel, clip = FORMS["int8"], 0.5
    naive, bounded = [], []
    for seed in range(20):
        delta = _update(seed)
        rounded = channel.encode_update(clip_update(delta, clip)[0], ZERO, np.random.default_rng(0))
        naive.append(_norm(channel.decode_update(rounded, ZERO)))
        bounded.append(_norm(_sent(channel, delta, clip, 0)))
    assert max(naive) > clip * (1 + WIRE)
    assert max(bounded) <= clip * (1 + WIRE)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    delta=UPDATES,
    clip=st.floats(0.2, 1.0),  # c = 1 bounds the coordinates SecAgg+ keeps; a = √26/32 < 0.2
    seed=st.integers(0, 2**32 - 1),
    low_rank=st.booleans(),
)
def test_a_secure_update_clipped_to_the_bound_is_within_c_after_quantization(
    delta: Arrays, clip: float, seed: int, low_rank: bool
) -> None:
    """SecAgg+ quantizes the whole masked vector (the update, then 5 metrics); the
    update's part of it, dequantized, is within C whatever the rounding draws."""
    channel = Channel(SHAPES, low_rank=LOW if low_rank else None, secure=SecureUpload(QUANTIZER, 5))
    factored = channel.factor(delta)
    clipped, _ = clip_update(factored, channel.clip_bound(clip, factored))
    sent = channel.encode_update(clipped, ZERO, None)
    assert all(v.dtype == np.float64 for v in sent.values())  # unrounded: SecAgg+ rounds
    rng = np.random.default_rng(seed)
    vector = flatten([*sent.values(), rng.uniform(-1, 1, 5)])
    summed = dequantize_sum(quantize(vector, QUANTIZER, rng), 1, QUANTIZER)
    assert float(np.linalg.norm(summed[: channel.update_length()])) <= clip * (1 + 1e-12)


# --- up: encoding and decoding an update ------------------------------------------------------
def test_float32_weights_go_up_as_start_plus_the_update() -> None:
    channel, start = Channel(SHAPES), _model()
    delta = {k: np.full(s, 0.25) for k, s in SHAPES.items()}
    payload = channel.encode_update(delta, start, None)
    assert all(v.dtype == np.float32 for v in payload.values())
    assert payload[TABLE][1].tolist() == [1.25, 2.25, 3.25, 4.25]  # row [1, 2, 3, 4] + 0.25
    assert payload["head.bias"].tolist() == [0.75]
    assert channel.decode_update(payload, start) == payload  # the weights, as they came


@pytest.mark.parametrize(("upload", "step"), [("int8", None), ("fp16", 2.0**-11), ("none", 0.0)])
def test_a_compressed_update_decodes_on_the_servers_exact_model(
    upload: str, step: float | None
) -> None:
    """decoded = (start + decompress(payload)) in float32, on the server's float64 start —
    not on the int8 model the devices started from: the download's rounding never enters."""
    channel = Channel(SHAPES, "int8", upload)
    start = {k: v.astype(np.float64) + 1e-3 / 3 for k, v in _model().items()}  # off every grid
    delta = _update(1, scale=0.1)
    payload = channel.encode_update(delta, start, np.random.default_rng(0))
    decoded = channel.decode_update(payload, start)
    came = decompress(payload, upload, SHAPES)
    for k in SHAPES:
        assert decoded[k].dtype == np.float32
        np.testing.assert_array_equal(decoded[k], (start[k] + came[k]).astype(np.float32))
        if step is None:  # int8, stochastic: within one level of each row's scale
            rows = delta[k].reshape(SHAPES[k][0] if k == TABLE else 1, -1)
            scale = np.abs(rows).max(axis=1, keepdims=True) / 127
            assert (np.abs(came[k].reshape(rows.shape) - rows) <= scale * (1 + WIRE)).all()
        else:  # fp16: half a unit in the last place (2^-25 among subnormals) after float32's
            subnormal = 2.0**-25 if upload == "fp16" else 0.0
            bound = (step + 2.0**-24) * np.abs(delta[k]) + subnormal
            assert (np.abs(came[k] - delta[k]) <= bound).all()
    rounded = channel.decode_model(channel.encode_model(start))  # what the devices start from
    on_rounded = (rounded[TABLE] + came[TABLE]).astype(np.float32)
    assert np.abs(on_rounded - decoded[TABLE]).max() > 1e-4  # the model's rounding, left out


def test_a_low_rank_update_trained_in_the_span_is_recovered_exactly() -> None:
    """ΔE = A·B (a device trains the factor against B): factor → A, expand → A·B."""
    channel = Channel(SHAPES, low_rank=LOW)
    b = LOW.basis(4)
    a = np.random.default_rng(0).normal(size=(5, 2))
    delta = {TABLE: a @ b, "head.bias": np.array([0.3])}
    factored = channel.factor(delta)
    assert list(factored) == [FACTOR, "head.bias"]
    np.testing.assert_allclose(factored[FACTOR], a, atol=1e-12)
    start = {k: v.astype(np.float64) for k, v in _model().items()}
    decoded = channel.decode_update(channel.encode_update(factored, start, None), start)
    np.testing.assert_allclose(decoded[TABLE], start[TABLE] + a @ b, atol=1e-6)  # float32
    np.testing.assert_allclose(decoded["head.bias"], [0.8], atol=1e-7)


def test_a_factor_of_any_other_update_is_its_projection_on_the_basis() -> None:
    channel = Channel(SHAPES, low_rank=LOW)
    b = LOW.basis(4)
    g = np.random.default_rng(1).normal(size=(5, 4))
    back = channel.expand(channel.factor({TABLE: g, "head.bias": np.ones(1)}))
    # each row's least-squares fit in B's row space, computed independently
    coefficients = np.linalg.lstsq(b.T, g.T, rcond=None)[0]  # (2, 5)
    np.testing.assert_allclose(back[TABLE], (b.T @ coefficients).T, atol=1e-12)
    np.testing.assert_allclose((g - back[TABLE]) @ b.T, 0.0, atol=1e-12)  # residual ⟂ B
    assert np.linalg.norm(back[TABLE]) < np.linalg.norm(g)  # never longer
    np.testing.assert_array_equal(back["head.bias"], np.ones(1))


def test_a_secure_update_goes_to_the_masking_unrounded() -> None:
    channel = Channel(SHAPES, secure=SecureUpload(QUANTIZER))
    delta = _update(2, scale=1e-3)
    sent = channel.encode_update(delta, _model(), np.random.default_rng(0))
    for k in SHAPES:
        assert sent[k].dtype == np.float64
        np.testing.assert_array_equal(sent[k], delta[k])


def test_an_upload_off_its_layout_is_refused() -> None:
    channel = Channel(SHAPES, "none", "int8")
    start = {k: v.astype(np.float64) for k, v in _model().items()}
    payload = compress(_update(0), "fp16")  # float16 where int8 codes and scales were named
    with pytest.raises(PayloadError, match="int8 payload"):
        channel.decode_update(payload, start)


# --- DP-FedAvg's noise ------------------------------------------------------------------------
def test_a_low_rank_rounds_noise_lives_in_its_basis_and_no_other_round_has_one() -> None:
    subspaces = Channel(SHAPES, "none", "int8", LOW).noise_subspaces()
    assert list(subspaces) == [TABLE]
    b = subspaces[TABLE]
    np.testing.assert_array_equal(b, LOW.basis(4))
    np.testing.assert_allclose(b @ b.T, np.eye(2), atol=1e-12)
    # every update the channel decodes lies in that row space: (I − BᵀB) removes nothing
    decoded = Channel(SHAPES, low_rank=LOW).expand(Channel(SHAPES, low_rank=LOW).factor(_update(3)))
    np.testing.assert_allclose(decoded[TABLE] - decoded[TABLE] @ b.T @ b, 0.0, atol=1e-12)
    for channel in (Channel(SHAPES), Channel(SHAPES, "int8", "int8")):
        assert channel.noise_subspaces() == {}
    assert Channel(SHAPES, secure=SecureUpload(QUANTIZER)).noise_subspaces() == {}
