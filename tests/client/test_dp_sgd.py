"""Tests for fedrec.client.dp_sgd: record-level DP-SGD on the device (Opacus, ghost clipping)."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from opacus.data_loader import DPDataLoader
from opacus.grad_sample import GradSampleModule
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedrec.client import dp_sgd as impl
from fedrec.client.dp_sgd import RecordDPConfig, dp_local_train, planned_use
from fedrec.client.local import LocalTrainConfig, build_local_model
from fedrec.common.data.catalog import Catalog
from fedrec.common.data.dataset import Interactions
from fedrec.common.data.shard import UserShard, user_shard
from fedrec.common.data.split import Split
from fedrec.common.model import SeedModel, initial_shared_state
from fedrec.common.privacy import PrivacyLedger, epsilon

DIM = 8
DP = RecordDPConfig(noise_multiplier=1.0, max_grad_norm=1.0, delta=1e-4)
CONFIG = LocalTrainConfig(epochs=1, lr=0.5, batch_size=32, negatives=4)
BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "dp_memory.py"
ME = torch.zeros(1, dtype=torch.long)  # the only user row of a device's model


@pytest.fixture(scope="module")
def shard(data: Interactions, split: Split) -> UserShard:
    """A user with 40 train items: 200 examples a round, 7 batches of 32."""
    full = user_shard(data, split, int(np.argmax(np.diff(split.train_indptr))))
    return replace(full, train_items=full.train_items[:40])


def _model(catalog: Catalog, shard: UserShard, seed: int = 0) -> SeedModel:
    shared = initial_shared_state(catalog, DIM, seed=seed)
    return impl.seed_model_of(build_local_model(catalog, shard, DIM, shared, None, seed=seed))


def _params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _batch(shard: UserShard) -> tuple[torch.Tensor, torch.Tensor]:
    """6 examples: 3 positives, 3 negatives."""
    negatives = shard.sample_negatives(3, np.random.default_rng(5))
    items = np.concatenate([shard.train_items[:3], negatives])
    return torch.from_numpy(items), torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0])


def _per_example_grads(
    model: SeedModel, items: torch.Tensor, labels: torch.Tensor
) -> dict[str, torch.Tensor]:
    """{name: (B, *shape)}: one plain autograd backward pass per example."""
    grads: dict[str, list[torch.Tensor]] = {n: [] for n, _ in model.named_parameters()}
    for i in range(len(items)):
        model.zero_grad(set_to_none=True)
        logit = model(ME, items[i : i + 1])
        nn.functional.binary_cross_entropy_with_logits(logit, labels[i : i + 1]).backward()
        for n, p in model.named_parameters():
            grads[n].append(p.grad.detach().clone())
    model.zero_grad(set_to_none=True)
    return {n: torch.stack(g) for n, g in grads.items()}


def _norms(grads: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B,) norm of each example's gradient over all parameters together."""
    return torch.cat([g.flatten(1) for g in grads.values()], dim=1).norm(dim=1)


def _wrap(
    model: SeedModel, items: torch.Tensor, labels: torch.Tensor, clip: float
) -> impl._Private:
    loader = DataLoader(TensorDataset(items, labels), batch_size=len(items))
    dp = RecordDPConfig(noise_multiplier=1.0, max_grad_norm=clip, delta=1e-4)
    noise = torch.Generator().manual_seed(0)
    return impl._make_private(model, loader, CONFIG, dp, PrivacyLedger(), noise, "ghost")


# --- Opacus on our model ----------------------------------------------------------------------
def test_hooks_per_example_gradients_equal_separate_backward_passes(
    catalog: Catalog, shard: UserShard
) -> None:
    model = _model(catalog, shard)
    items, labels = _batch(shard)
    want = _per_example_grads(model, items, labels)
    gsm = GradSampleModule(copy.deepcopy(model), loss_reduction="sum")
    users = torch.zeros(len(items), dtype=torch.long)
    loss = nn.functional.binary_cross_entropy_with_logits(
        gsm(users, items), labels, reduction="sum"
    )
    with impl._quiet_opacus():
        loss.backward()
    for name, p in gsm._module.named_parameters():
        assert p.grad_sample.shape == (len(items), *p.shape), name
        torch.testing.assert_close(p.grad_sample, want[name], rtol=0, atol=1e-5, msg=name)


def test_ghost_norms_equal_true_per_example_norms(catalog: Catalog, shard: UserShard) -> None:
    model = _model(catalog, shard)
    items, labels = _batch(shard)
    want = _norms(_per_example_grads(model, items, labels))
    with impl._quiet_opacus():
        private = _wrap(model, items, labels, clip=1.0)
        loss = private.criterion(private.module(torch.zeros(6, dtype=torch.long), items), labels)
        loss.backward()
        impl._release(private, model)
    # the mean reduction is undone inside: these are norms of each example's own loss gradient
    got = private.module.per_sample_gradient_norms
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("clip_at", [0.25, 0.5, 1e6], ids=["most", "half", "none"])
def test_ghost_clipped_sum_is_the_sum_of_clipped_examples(
    catalog: Catalog, shard: UserShard, clip_at: float
) -> None:
    # p.grad after the criterion's backward is the clipped sum, before the optimizer's noise:
    # Σ_i min(1, C / (‖g_i‖ + 1e-6)) · g_i, so its norm is at most b·C.
    model = _model(catalog, shard)
    items, labels = _batch(shard)
    per_example = _per_example_grads(model, items, labels)
    raw = _norms(per_example)
    clip = float(raw.median()) * clip_at * 2 if clip_at < 1 else clip_at  # 0.5: ~half clipped
    factor = (clip / (raw + 1e-6)).clamp(max=1.0)  # (B,)
    with impl._quiet_opacus():
        private = _wrap(model, items, labels, clip=clip)
        loss = private.criterion(private.module(torch.zeros(6, dtype=torch.long), items), labels)
        loss.backward()
        got = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
        impl._release(private, model)
    for name, g in per_example.items():
        want = torch.einsum("b,b...->...", factor, g)
        torch.testing.assert_close(got[name], want, rtol=0, atol=1e-5, msg=name)
    assert torch.all(factor * raw <= clip + 1e-5)  # every contribution inside the ball
    total = torch.cat([g.flatten() for g in got.values()]).norm()
    assert total <= len(items) * clip + 1e-5
    if clip_at < 1:  # some examples were over the bound and got scaled down
        assert (factor < 1).any() and (raw > clip).any()
    else:
        assert torch.equal(factor, torch.ones(len(items)))


# --- accounting -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("examples", "batch", "want"),
    [
        (200, 32, (1 / 7, 7)),
        (5, 64, (1.0, 1)),
        # 93 batches, but Opacus's sampler yields int(1 / (1/93)) = 92 and accounts q = 1/92
        (93 * 64, 64, (1 / 92, 92)),
        (49, 1, (1 / 49, 49)),
    ],
)
def test_planned_use_is_what_opacus_samples_and_accounts(
    examples: int, batch: int, want: tuple[float, int]
) -> None:
    config = replace(CONFIG, batch_size=batch, epochs=3)
    q, steps = planned_use(examples, config)
    assert (q, steps) == (want[0], 3 * want[1])
    loader = DataLoader(TensorDataset(torch.zeros(examples)), batch_size=batch)
    dp_loader = DPDataLoader.from_data_loader(loader)
    assert dp_loader.sample_rate == 1 / len(loader)  # the rate it really samples at
    assert 1 / len(dp_loader) == q  # the rate make_private hands the accountant
    assert 3 * len(dp_loader) == steps


def test_epsilon_accumulates_over_rounds_in_the_ledger(catalog: Catalog, shard: UserShard) -> None:
    model = _model(catalog, shard)
    ledger = PrivacyLedger()
    first = dp_local_train(model, shard, CONFIG, DP, ledger, np.random.default_rng(0))
    second = dp_local_train(model, shard, CONFIG, DP, ledger, np.random.default_rng(1))
    q, steps = planned_use(len(shard.train_items) * 5, CONFIG)  # 200 examples at batch 32
    assert (q, steps) == (1 / 7, 7)
    assert first.steps == second.steps == steps
    # the accountant merged both rounds into one (z, q, steps) entry
    assert ledger.history == [(DP.noise_multiplier, q, 2 * steps)]
    assert 0 < first.epsilon < second.epsilon
    assert first.epsilon == epsilon(DP.noise_multiplier, q, steps, DP.delta)
    assert second.epsilon == epsilon(DP.noise_multiplier, q, 2 * steps, DP.delta)
    assert not first.declined and not second.declined
    assert first.examples > 0 and first.loss > 0


def test_planned_steps_match_the_accountant_where_opacus_stops_short(
    catalog: Catalog, shard: UserShard
) -> None:
    # 37 items × 5 = 185 examples at batch 2: 93 batches, but int(1 / (1/93)) = 92 steps,
    # accounted at q = 1/92 (the sampler's real rate is 1/93)
    short = replace(shard, train_items=shard.train_items[:37])
    config = replace(CONFIG, batch_size=2)
    ledger = PrivacyLedger()
    result = dp_local_train(
        _model(catalog, short), short, config, DP, ledger, np.random.default_rng(0)
    )
    assert result.steps == 92
    assert ledger.history == [(DP.noise_multiplier, 1 / 92, 92)]


def test_prv_accountant(catalog: Catalog, shard: UserShard) -> None:
    dp = replace(DP, accountant="prv")
    ledger = PrivacyLedger("prv")
    result = dp_local_train(
        _model(catalog, shard), shard, CONFIG, dp, ledger, np.random.default_rng(0)
    )
    q, steps = planned_use(len(shard.train_items) * 5, CONFIG)
    assert ledger.history == [(DP.noise_multiplier, q, steps)]
    assert result.epsilon == ledger.epsilon(DP.delta) > 0
    with pytest.raises(ValueError, match="one accountant"):
        dp_local_train(_model(catalog, shard), shard, CONFIG, DP, ledger, np.random.default_rng(0))


def test_budget_stop_declines_and_changes_nothing(catalog: Catalog, shard: UserShard) -> None:
    model = _model(catalog, shard)
    ledger = PrivacyLedger()
    q, steps = planned_use(len(shard.train_items) * 5, CONFIG)
    one_round = epsilon(DP.noise_multiplier, q, steps, DP.delta)
    two_rounds = epsilon(DP.noise_multiplier, q, 2 * steps, DP.delta)
    dp = replace(DP, epsilon_budget=(one_round + two_rounds) / 2)
    first = dp_local_train(model, shard, CONFIG, dp, ledger, np.random.default_rng(0))
    assert not first.declined and first.epsilon == one_round
    params, history = _params(model), list(ledger.history)

    second = dp_local_train(model, shard, CONFIG, dp, ledger, np.random.default_rng(1))

    assert second.declined
    assert (second.loss, second.examples, second.steps) == (0.0, 0, 0)
    assert second.epsilon == one_round
    assert ledger.history == history
    for name, value in model.named_parameters():
        assert torch.equal(value, params[name]), name


def test_user_without_train_items_trains_nothing(catalog: Catalog, shard: UserShard) -> None:
    empty = replace(shard, train_items=shard.train_items[:0])
    model = _model(catalog, empty)
    params = _params(model)
    ledger = PrivacyLedger(history=[(1.0, 0.1, 3)])
    result = dp_local_train(model, empty, CONFIG, DP, ledger, np.random.default_rng(0))
    assert (result.examples, result.steps, result.declined) == (0, 0, False)
    assert result.epsilon == ledger.epsilon(DP.delta) > 0
    assert ledger.history == [(1.0, 0.1, 3)]
    assert all(torch.equal(p, params[n]) for n, p in model.named_parameters())


# --- training ---------------------------------------------------------------------------------
def test_same_seed_same_model_and_no_global_rng(catalog: Catalog, shard: UserShard) -> None:
    torch_rng = torch.get_rng_state()
    runs = []
    for seed in (0, 0, 1):
        model = _model(catalog, shard)
        dp_local_train(model, shard, CONFIG, DP, PrivacyLedger(), np.random.default_rng(seed))
        runs.append(_params(model))
    assert all(torch.equal(runs[0][n], runs[1][n]) for n in runs[0])
    assert all(not torch.equal(runs[0][n], runs[2][n]) for n in runs[0])
    assert torch.equal(torch.get_rng_state(), torch_rng)  # seeded generators only


def test_training_leaves_a_plain_model(catalog: Catalog, shard: UserShard) -> None:
    model = _model(catalog, shard)
    dp_local_train(model, shard, CONFIG, DP, PrivacyLedger(), np.random.default_rng(0))
    assert type(model) is SeedModel
    for module in model.modules():
        assert not module._forward_hooks and not module._backward_hooks
        assert not hasattr(module, "activations") or not module.activations
    for name, p in model.named_parameters():
        assert p.grad is None, name
        assert not {"grad_sample", "summed_grad", "_norm_sample", "_forward_counter"} & set(
            vars(p)
        ), name
    # ordinary autograd still works on it, with gradients of the ordinary shape
    items, labels = _batch(shard)
    loss = nn.functional.binary_cross_entropy_with_logits(model(ME.expand(6), items), labels)
    loss.backward()
    assert model.item_embedding.weight.grad.shape == model.item_embedding.weight.shape


def test_dp_training_still_learns(catalog: Catalog, shard: UserShard) -> None:
    model = _model(catalog, shard)
    items, labels = impl.round_examples(shard, CONFIG, np.random.default_rng(99))
    items_t, labels_t = torch.from_numpy(items), torch.from_numpy(labels)

    def bce() -> float:
        with torch.no_grad():
            logits = model(ME.expand(len(items_t)), items_t)
            return float(nn.functional.binary_cross_entropy_with_logits(logits, labels_t))

    dp = replace(DP, noise_multiplier=0.3)
    config = replace(CONFIG, lr=2.0)
    before = bce()
    ledger = PrivacyLedger()
    losses = [
        dp_local_train(model, shard, config, dp, ledger, np.random.default_rng(r)).loss
        for r in range(6)
    ]
    assert bce() < 0.8 * before, (before, bce())
    assert losses[-1] < losses[0], losses


def test_noise_reaches_every_item_row(catalog: Catalog, shard: UserShard) -> None:
    model = _model(catalog, shard)
    before = model.item_embedding.weight.detach().clone()
    dp_local_train(model, shard, CONFIG, DP, PrivacyLedger(), np.random.default_rng(0))
    moved = (model.item_embedding.weight.detach() != before).all(dim=1)  # (I,)
    never_touched = np.setdiff1d(np.arange(catalog.num_items), shard.excluded())
    assert bool(moved.all()), int((~moved).sum())
    assert bool(moved[torch.from_numpy(never_touched)].all())


def test_ghost_equals_hooks_and_survives_empty_batches(
    catalog: Catalog, shard: UserShard, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 1 item + 1 negative at batch 1: q = 1/2, each Poisson batch is empty with prob. 1/4.
    tiny = replace(shard, train_items=shard.train_items[:1])
    config = replace(CONFIG, batch_size=1, negatives=1, epochs=8)
    sizes: list[int] = []
    step = impl._step
    monkeypatch.setattr(impl, "_step", lambda p, i, y: (sizes.append(len(i)), step(p, i, y))[1])
    results, params = [], []
    for mode in ("ghost", "hooks"):
        model, ledger = _model(catalog, tiny), PrivacyLedger()
        rng = np.random.default_rng(4)
        results.append(dp_local_train(model, tiny, config, DP, ledger, rng, grad_sample_mode=mode))
        params.append(_params(model))
        assert ledger.history == [(DP.noise_multiplier, 0.5, 16)]
    assert 0 in sizes  # empty batches happened, and each still counted as a step
    assert results[0].steps == results[1].steps == 16
    assert results[0].examples == results[1].examples == sum(sizes) // 2
    assert results[0].loss == pytest.approx(results[1].loss, abs=1e-6)
    for name in params[0]:
        torch.testing.assert_close(params[0][name], params[1][name], rtol=0, atol=1e-5, msg=name)


def test_batch_of_one_has_a_nonzero_average_denominator(catalog: Catalog, shard: UserShard) -> None:
    """Regression: Opacus's int(N·q) is int(49 · (1/49)) = 0 → inf gradients at batch 1."""
    short = replace(shard, train_items=shard.train_items[:49])
    model = _model(catalog, short)
    config = replace(CONFIG, batch_size=1, negatives=0)
    dp_local_train(model, short, config, DP, PrivacyLedger(), np.random.default_rng(0))
    assert all(torch.isfinite(p).all() for p in model.parameters())


# --- configuration ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"noise_multiplier": 0.0}, "noise_multiplier must be > 0"),
        ({"max_grad_norm": -1.0}, "max_grad_norm must be > 0"),
        ({"delta": 1.0}, r"delta must be in \(0, 1\)"),
        ({"epsilon_budget": -1.0}, "epsilon_budget must be >= 0"),
        ({"accountant": "gdp"}, "accountant must be one of"),
    ],
)
def test_record_dp_config_rejects(changes: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        replace(DP, **changes)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"optimizer": "adam"}, "optimizer"),
        ({"private_epochs": 1}, "private_epochs"),
        ({"proximal_mu": 0.1}, "proximal_mu"),
    ],
)
def test_steps_outside_dp_sgd_are_rejected(
    catalog: Catalog, shard: UserShard, changes: dict[str, object], match: str
) -> None:
    model = _model(catalog, shard)
    config = replace(CONFIG, **changes)
    with pytest.raises(ValueError, match=match):
        dp_local_train(model, shard, config, DP, PrivacyLedger(), np.random.default_rng(0))


# --- memory -----------------------------------------------------------------------------------
def test_one_dp_round_on_a_100k_catalog_stays_under_1_gib() -> None:
    """benchmarks/dp_memory.py in a fresh process (~4 s): ghost clipping keeps memory flat."""
    done = subprocess.run(
        [sys.executable, str(BENCHMARK), "--items", "100000", "--json"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    (row,) = json.loads(done.stdout)
    assert "error" not in row, row
    assert row["steps"] == 4
    assert row["peak_after_mib"] < 1024, row


def test_the_torch_twin_carries_the_numpy_model_both_ways(
    catalog: Catalog, shard: UserShard
) -> None:
    """DP-SGD trains a torch copy of the device's NumPy model (Opacus needs one): the copy
    starts with the model's values and scores as it does, and what it learnt comes back."""
    model = build_local_model(catalog, shard, DIM, initial_shared_state(catalog, DIM, 0), None, 0)
    twin = impl.seed_model_of(model)
    for name, value in twin.named_parameters():
        np.testing.assert_array_equal(value.detach().numpy(), model.params[name])
    with torch.no_grad():
        scores = twin.score_all(ME)[0].numpy()
    np.testing.assert_allclose(scores, model.score_all(), atol=1e-6, rtol=1e-5)
    before = {n: v.copy() for n, v in model.params.items()}
    dp_local_train(twin, shard, CONFIG, DP, PrivacyLedger(), np.random.default_rng(0))
    impl.write_back(twin, model)
    for name, value in twin.named_parameters():
        np.testing.assert_array_equal(model.params[name], value.detach().numpy())
        assert not np.array_equal(model.params[name], before[name]), name  # noise everywhere
