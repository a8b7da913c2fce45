"""Tests for fedrec.common.privacy: ε from the accountants, calibration, the ledger."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays as np_arrays

from fedrec.common.privacy import (
    RDP_ORDERS,
    PrivacyLedger,
    calibrate_noise,
    clip_update,
    epsilon,
    global_norm,
)


def _full_batch_rdp_epsilon(z: float, steps: int, delta: float) -> float:
    """Independent reference for q = 1: the Gaussian mechanism has RDP α/(2z²) per use
    (Mironov 2017), composing additively; converted to (ε, δ) with Balle et al. 2020, Thm 21."""
    orders = np.array(RDP_ORDERS)
    rdp = steps * orders / (2 * z**2)
    eps = rdp + np.log1p(-1 / orders) - (np.log(delta) + np.log(orders)) / (orders - 1)
    return float(np.nanmin(eps))


@pytest.mark.parametrize(
    ("z", "steps", "delta"), [(1.0, 1, 1e-5), (2.0, 50, 1e-4), (5.0, 600, 1e-5)]
)
def test_full_batch_epsilon_matches_the_closed_form(z: float, steps: int, delta: float) -> None:
    assert epsilon(z, 1.0, steps, delta) == pytest.approx(_full_batch_rdp_epsilon(z, steps, delta))


def test_known_subsampled_value() -> None:
    """Abadi et al. 2016's MNIST setting (q = 0.01, σ = 1.1, 10k steps, δ = 1e-5), pinned."""
    assert epsilon(1.1, 0.01, 10_000, 1e-5) == pytest.approx(5.632, abs=2e-3)


@pytest.mark.parametrize(
    "history",
    [
        [(1.1, 0.01, 10_000)],
        [(0.7, 20 / 943, 600)],
        [(1.0, 1 / 3, 3), (1.0, 1 / 3, 3), (2.0, 0.5, 7), (0.8, 1.0, 1)],
    ],
)
def test_ledger_epsilon_equals_opacus_rdp_accountant(history: list) -> None:
    """The memoized per-step RDP composes exactly as Opacus's accountant does."""
    from opacus.accountants import RDPAccountant

    reference = RDPAccountant()
    reference.history = list(history)
    expected = reference.get_epsilon(1e-5, alphas=list(RDP_ORDERS))
    assert PrivacyLedger(history=list(history)).epsilon(1e-5) == pytest.approx(expected, rel=1e-12)


def test_epsilon_grows_with_steps_and_rate_and_falls_with_noise() -> None:
    base = epsilon(1.0, 0.02, 100, 1e-5)
    assert epsilon(1.0, 0.02, 200, 1e-5) > base
    assert epsilon(1.0, 0.05, 100, 1e-5) > base
    assert epsilon(2.0, 0.02, 100, 1e-5) < base
    assert epsilon(1.0, 0.02, 0, 1e-5) == 0.0


def test_prv_is_no_looser_than_rdp() -> None:
    rdp = epsilon(1.0, 0.02, 200, 1e-5, accountant="rdp")
    prv = epsilon(1.0, 0.02, 200, 1e-5, accountant="prv")
    assert 0 < prv <= rdp * 1.01, (prv, rdp)


@pytest.mark.parametrize(("target", "q", "steps"), [(8.0, 20 / 943, 600), (2.0, 20 / 943, 600),
                                                     (1.0, 0.01, 1000)])  # fmt: skip
def test_calibrated_noise_meets_the_target_tightly(target: float, q: float, steps: int) -> None:
    z = calibrate_noise(target, 1e-4, q, steps)
    assert epsilon(z, q, steps, 1e-4) <= target
    assert epsilon(z * 0.97, q, steps, 1e-4) > target * 0.99  # not much more noise than needed


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: epsilon(0.0, 0.1, 1, 1e-5), "noise multiplier must be > 0"),
        (lambda: epsilon(1.0, 0.0, 1, 1e-5), "sample rate must be in"),
        (lambda: epsilon(1.0, 1.5, 1, 1e-5), "sample rate must be in"),
        (lambda: epsilon(1.0, 0.1, -1, 1e-5), "steps must be >= 0"),
        (lambda: epsilon(1.0, 0.1, 1, 1.0), "delta must be in"),
        (lambda: epsilon(1.0, 0.1, 1, 1e-5, accountant="gdp"), "accountant must be one of"),
        (lambda: calibrate_noise(math.inf, 1e-5, 0.1, 10), "target epsilon must be"),
        (lambda: calibrate_noise(1.0, 1e-5, 0.1, 0), "steps must be >= 1"),
    ],
)
def test_bad_arguments_name_the_problem(call, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=message):
        call()


# --- the ledger ---------------------------------------------------------------------------------
def test_ledger_accumulates_across_rounds() -> None:
    ledger = PrivacyLedger()
    assert ledger.epsilon(1e-5) == 0.0
    values = []
    for _ in range(3):
        ledger.record(1.0, 0.05, steps=10)
        values.append(ledger.epsilon(1e-5))
    assert values[0] < values[1] < values[2]
    assert ledger.history == [(1.0, 0.05, 30)] and ledger.steps == 30
    assert values[2] == pytest.approx(epsilon(1.0, 0.05, 30, 1e-5))


def test_ledger_composes_different_mechanisms() -> None:
    ledger = PrivacyLedger()
    ledger.record(1.0, 0.05, steps=10)
    ledger.record(2.0, 0.05, steps=10)
    assert len(ledger.history) == 2
    alone = epsilon(1.0, 0.05, 10, 1e-5)
    assert alone < ledger.epsilon(1e-5) < epsilon(1.0, 0.05, 20, 1e-5)


def test_epsilon_after_plans_without_spending() -> None:
    ledger = PrivacyLedger()
    ledger.record(1.0, 0.05, steps=10)
    planned = ledger.epsilon_after(1e-5, 1.0, 0.05, steps=5)
    assert planned == pytest.approx(epsilon(1.0, 0.05, 15, 1e-5))
    assert ledger.steps == 10  # nothing recorded


def test_the_ledger_is_an_opacus_accountant_state() -> None:
    """Steps taken by Opacus's own accountant carry over through its state dict, merged the
    way Opacus merges them (what a device's DP-SGD round does, client/dp_sgd.py)."""
    from opacus.accountants import RDPAccountant

    ledger = PrivacyLedger()
    ledger.record(1.0, 0.1, steps=2)
    engine = RDPAccountant()
    engine.load_state_dict(ledger.state_dict())
    for _ in range(3):
        engine.step(noise_multiplier=1.0, sample_rate=0.1)
    engine.step(noise_multiplier=2.0, sample_rate=0.1)
    ledger.load_state_dict(engine.state_dict())
    assert ledger.history == [(1.0, 0.1, 5), (2.0, 0.1, 1)]
    assert ledger.epsilon(1e-5) == pytest.approx(engine.get_epsilon(1e-5, alphas=RDP_ORDERS))
    with pytest.raises(ValueError, match="cannot be loaded"):
        PrivacyLedger("prv").load_state_dict(engine.state_dict())  # one mechanism per ledger


def test_ledger_survives_serialization() -> None:
    ledger = PrivacyLedger(accountant="rdp")
    ledger.record(1.3, 0.02, steps=7)
    ledger.record(0.9, 0.02, steps=3)
    restored = PrivacyLedger.from_dict(ledger.to_dict())
    assert restored == ledger
    assert restored.epsilon(1e-4) == ledger.epsilon(1e-4)
    with pytest.raises(ValueError, match="noise multiplier must be > 0"):
        PrivacyLedger.from_dict({"accountant": "rdp", "history": [[0.0, 0.1, 1]]})


# --- clipping -------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(
    a=np_arrays(np.float64, (3, 4), elements=st.floats(-1e3, 1e3)),
    b=np_arrays(np.float64, (2,), elements=st.floats(-1e3, 1e3)),
    clip=st.floats(1e-3, 1e3),
)
def test_clipped_update_norm_never_exceeds_c(a: np.ndarray, b: np.ndarray, clip: float) -> None:
    clipped, norm = clip_update({"a": a, "b": b}, clip)
    assert global_norm(clipped) <= clip * (1 + 1e-12)
    assert norm == pytest.approx(np.sqrt((a**2).sum() + (b**2).sum()))
    if norm <= clip:  # an update within C is left as it is
        np.testing.assert_array_equal(clipped["a"], a)


def test_clip_known_values() -> None:
    clipped, norm = clip_update({"x": np.array([3.0, 4.0])}, 1.0)  # norm = 5 -> scale 1/5
    assert norm == 5.0
    np.testing.assert_allclose(clipped["x"], [0.6, 0.8])


def test_a_zero_update_stays_zero() -> None:
    """A device that declines sends Δ = 0 (Flower 1.42's clip divides by its norm)."""
    clipped, norm = clip_update({"x": np.zeros(3)}, 1.0)
    assert norm == 0.0
    np.testing.assert_array_equal(clipped["x"], np.zeros(3))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_non_finite_update_cannot_be_clipped(bad: float) -> None:
    """NaN would make min(1, C/‖Δ‖) = 1 and pass the update unscaled (review finding)."""
    from fedrec.common.privacy import NonFiniteUpdate

    with pytest.raises(NonFiniteUpdate, match="non-finite"):
        clip_update({"x": np.array([1000.0, bad])}, 1.0)


def test_epsilon_after_predicts_exactly_what_record_gives() -> None:
    for accountant in ("rdp", "prv"):
        ledger = PrivacyLedger(accountant, [(1.0, 0.1, 5)])
        predicted = ledger.epsilon_after(1e-4, 1.0, 0.1, 3)
        ledger.record(1.0, 0.1, 3)
        assert ledger.epsilon(1e-4) == predicted


def test_clip_delta_refuses_other_arrays_or_shapes() -> None:
    from fedrec.common.privacy import clip_delta

    start = {"w": np.zeros((3, 2)), "b": np.zeros(1)}
    delta, norm = clip_delta(start, {"w": np.ones((3, 2)), "b": np.zeros(1)}, None)
    assert norm == pytest.approx(np.sqrt(6)) and delta["w"].dtype == np.float64
    with pytest.raises(ValueError, match="are not the model's"):
        clip_delta(start, {"w": np.ones((3, 2))}, 1.0)
    with pytest.raises(ValueError, match=r"\{'w': \(1, 2\)\} do not have the model's shapes"):
        clip_delta(start, {"w": np.ones((1, 2)), "b": np.zeros(1)}, 1.0)  # would broadcast
