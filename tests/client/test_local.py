"""Tests for fedrec.client.local: on-device training and evaluation."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from fedrec.client.local import (
    ME,
    LocalTrainConfig,
    build_local_model,
    local_evaluate,
    local_train,
    refresh_user,
)
from fedrec.common.data.catalog import Catalog
from fedrec.common.data.cold import split_with_cold_items
from fedrec.common.data.dataset import Interactions
from fedrec.common.data.shard import UserShard, user_shard
from fedrec.common.data.sources import load_interactions
from fedrec.common.data.split import NO_ITEM, Split
from fedrec.common.data.synthetic import SyntheticConfig
from fedrec.common.model import (
    ModelConfig,
    SeedModel,
    initial_shared_state,
    shared_state,
)
from fedrec.simulations.training import evaluate

DIM = 8
EVAL_KEYS = {
    "val-hr@10", "val-ndcg@10", "val-full_hr@10", "val-full_ndcg@10",
    "hr@10", "ndcg@10", "full_hr@10", "full_ndcg@10",
}  # fmt: skip


@pytest.fixture(scope="module")
def shard(data: Interactions, split: Split) -> UserShard:
    user = int(np.argmax(np.diff(split.train_indptr)))  # the user with the most train items
    return user_shard(data, split, user)


def _model(catalog: Catalog, shard: UserShard, seed: int = 0) -> SeedModel:
    shared = initial_shared_state(catalog, DIM, seed=seed)
    return build_local_model(catalog, shard, DIM, shared, None, seed=seed)


def _bce(model: SeedModel, items: np.ndarray, labels: np.ndarray) -> float:
    with torch.no_grad():
        logits = model(ME.expand(len(items)), torch.from_numpy(items))
        return float(nn.functional.binary_cross_entropy_with_logits(
            logits, torch.from_numpy(labels.astype(np.float32))))  # fmt: skip


def _with_scores(model: SeedModel, scores: np.ndarray) -> SeedModel:
    """Make ``model`` score the catalog with ``scores`` (an oracle for the ranking code)."""
    logits = torch.as_tensor(scores, dtype=torch.float32)[None, :]
    model.score_all = lambda users: logits.expand(len(users), -1).clone()  # type: ignore[method-assign]
    return model


# --- building ---------------------------------------------------------------------------------
def test_build_local_model_takes_shared_and_private_state(
    catalog: Catalog, shard: UserShard
) -> None:
    shared = initial_shared_state(catalog, DIM, seed=3)
    private = {
        "user_embedding.weight": torch.full((1, DIM), 0.5),
        "user_features": torch.from_numpy(shard.user_features[None, :].copy()),
    }
    model = build_local_model(catalog, shard, DIM, shared, private, seed=0)
    for key, value in shared_state(model).items():
        torch.testing.assert_close(value, shared[key], rtol=0, atol=0)
    torch.testing.assert_close(model.user_embedding.weight.detach(), torch.full((1, DIM), 0.5))
    # without private state the user row comes from the seed: reproducible, seed-dependent
    a = build_local_model(catalog, shard, DIM, shared, None, seed=1).user_embedding.weight
    b = build_local_model(catalog, shard, DIM, shared, None, seed=1).user_embedding.weight
    c = build_local_model(catalog, shard, DIM, shared, None, seed=2).user_embedding.weight
    assert torch.equal(a, b) and not torch.equal(a, c)


# --- training ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "config",
    [LocalTrainConfig(epochs=1), LocalTrainConfig(epochs=1, optimizer="adam", lr=0.02)],
    ids=["sgd", "adam"],
)
def test_local_train_lowers_the_loss(
    catalog: Catalog, shard: UserShard, config: LocalTrainConfig
) -> None:
    model = _model(catalog, shard)
    fixed_negatives = shard.sample_negatives(4 * len(shard.train_items), np.random.default_rng(9))
    items = np.concatenate([shard.train_items, fixed_negatives])
    labels = np.concatenate([np.ones(len(shard.train_items)), np.zeros(len(fixed_negatives))])
    before = _bce(model, items, labels)
    losses = []
    for round_ in range(6):
        loss, examples = local_train(model, shard, config, np.random.default_rng([0, round_]))
        losses.append(loss)
        assert examples == len(shard.train_items) * (1 + config.negatives)
    after = _bce(model, items, labels)
    assert after < before * 0.8, (before, after)
    assert losses[-1] < losses[0], losses
    assert all(math.isfinite(x) for x in losses)


def test_without_item_ids_a_device_trains_the_towers_and_sends_no_table(
    catalog: Catalog, shard: UserShard
) -> None:
    """The shared group says the model has no item table (item-ids = "none"): the device
    builds that model, trains it (the loss falls, every shared array moves) and its shared
    state, what it sends, has no table."""
    shared = initial_shared_state(catalog, DIM, seed=0, item_ids=False)
    model = build_local_model(catalog, shard, DIM, shared, None, seed=0)
    assert model.item_embedding is None
    negatives = shard.sample_negatives(4 * len(shard.train_items), np.random.default_rng(9))
    items = np.concatenate([shard.train_items, negatives])
    labels = np.concatenate([np.ones(len(shard.train_items)), np.zeros(len(negatives))])
    before = _bce(model, items, labels)
    for round_ in range(4):
        local_train(model, shard, LocalTrainConfig(epochs=1), np.random.default_rng(round_))
    assert _bce(model, items, labels) < before * 0.9, before
    after = shared_state(model)
    assert set(after) == set(shared)
    assert all(not torch.equal(after[k], shared[k]) for k in after)


def test_local_train_touches_nothing_but_the_model(catalog: Catalog, shard: UserShard) -> None:
    shared = initial_shared_state(catalog, DIM, seed=0)
    shared_before = {k: v.clone() for k, v in shared.items()}
    model = build_local_model(catalog, shard, DIM, shared, None, seed=0)
    item_features = catalog.item_features.copy()
    shard_before = (shard.train_items.copy(), shard.candidates.copy(), shard.user_features.copy())
    buffers_before = {k: v.clone() for k, v in model.named_buffers()}
    torch_rng, np_rng = torch.get_rng_state(), np.random.get_state()
    params_before = shared_state(model)

    local_train(model, shard, LocalTrainConfig(epochs=2), np.random.default_rng(0))

    # the server's arrays are not aliased by the model, so they keep the round's start
    for key, value in shared.items():
        assert torch.equal(value, shared_before[key]), key
    np.testing.assert_array_equal(catalog.item_features, item_features)
    np.testing.assert_array_equal(shard.train_items, shard_before[0])
    np.testing.assert_array_equal(shard.candidates, shard_before[1])
    np.testing.assert_array_equal(shard.user_features, shard_before[2])
    for key, value in model.named_buffers():  # catalog and user features are not trained
        assert torch.equal(value, buffers_before[key]), key
    assert torch.equal(torch.get_rng_state(), torch_rng)  # no global RNG consumed
    assert all(np.array_equal(a, b) if isinstance(a, np.ndarray) else a == b
               for a, b in zip(np.random.get_state(), np_rng, strict=True))  # fmt: skip
    # ... while the model itself did train, shared and private parameters alike
    after = shared_state(model)
    assert all(not torch.equal(after[k], params_before[k]) for k in after)


def test_compact_training_equals_training_the_full_table(
    catalog: Catalog, shard: UserShard
) -> None:
    # Local training runs on a copy holding only the touched item rows. Against a reference
    # that trains the full model on the same examples, every parameter must match exactly,
    # and rows never touched (e.g. the evaluation candidates) must be bit-identical to before.
    from fedrec.client import local as impl

    config = LocalTrainConfig(epochs=1, negatives=1)
    start = _model(catalog, shard)
    plan = [impl._epoch_examples(shard, config, np.random.default_rng(3))]
    reference = copy.deepcopy(start)
    impl._epochs(reference, _optimizers(reference, config), plan, config, anchor=None)
    model = copy.deepcopy(start)
    rows = np.unique(plan[0][0])
    compact = impl._compact_copy(model, rows)
    local_plan = [(np.searchsorted(rows, plan[0][0]), plan[0][1])]
    impl._epochs(compact, _optimizers(compact, config), local_plan, config, anchor=None)
    impl._write_back(model, compact, rows)
    for (name, want), (_, got) in zip(
        reference.named_parameters(), model.named_parameters(), strict=True
    ):
        assert torch.equal(want, got), name
    untouched = start.item_embedding.weight[torch.from_numpy(shard.candidates)]
    assert torch.equal(model.item_embedding.weight[torch.from_numpy(shard.candidates)], untouched)


def _optimizers(model: SeedModel, config: LocalTrainConfig) -> list[torch.optim.Optimizer]:
    from fedrec.client import local as impl

    shared = [p for n, p in model.named_parameters() if n != "user_embedding.weight"]
    return [
        impl._private_optimizer([model.user_embedding.weight], config),
        impl._shared_optimizer(shared, config),
    ]


def test_shared_parameters_take_sgd_steps_and_the_user_row_adam(
    catalog: Catalog, shard: UserShard
) -> None:
    """One batch: shared moves by exactly −lr·∇, the private row by AdamW's first step."""
    config = LocalTrainConfig(
        epochs=1, negatives=0, lr=0.7, private_lr=0.03, private_weight_decay=0.5,
        batch_size=10_000,
    )  # fmt: skip
    model = _model(catalog, shard)
    reference = copy.deepcopy(model)
    items = torch.from_numpy(shard.train_items)
    loss = nn.functional.binary_cross_entropy_with_logits(
        reference(ME.expand(len(items)), items), torch.ones(len(items))
    )
    loss.backward()
    local_train(model, shard, config, np.random.default_rng(0))
    for name, param in model.named_parameters():
        start = dict(reference.named_parameters())[name]
        grad = start.grad
        assert grad is not None, name
        if name == "user_embedding.weight":  # AdamW: decay, then lr · sign(g) (where g ≠ 0)
            moved = grad.abs() > 1e-5  # Adam: g / (|g| + 1e-8) is ±1 only for |g| ≫ 1e-8
            decayed = start * (1 - config.private_lr * config.private_weight_decay)
            expected = decayed - config.private_lr * torch.sign(grad)
            torch.testing.assert_close(param[moved], expected[moved], atol=1e-5, rtol=0)
        else:
            torch.testing.assert_close(param, start - config.lr * grad, atol=1e-6, rtol=1e-5)


def test_refresh_user_fits_only_the_private_row(catalog: Catalog, shard: UserShard) -> None:
    model = _model(catalog, shard)
    shared_before = shared_state(model)
    row_before = model.user_embedding.weight.detach().clone()
    negatives = shard.sample_negatives(4 * len(shard.train_items), np.random.default_rng(9))
    items = np.concatenate([shard.train_items, negatives])
    labels = np.concatenate([np.ones(len(shard.train_items)), np.zeros(len(negatives))])
    before = _bce(model, items, labels)
    refresh_user(model, shard, LocalTrainConfig(), 3, np.random.default_rng(0))
    for key, value in shared_state(model).items():  # bit-identical shared group
        assert torch.equal(value, shared_before[key]), key
    assert not torch.equal(model.user_embedding.weight, row_before)
    assert _bce(model, items, labels) < before  # fits the user's own data better
    frozen = _model(catalog, shard)
    refresh_user(frozen, shard, LocalTrainConfig(), 0, np.random.default_rng(0))  # 0: no-op
    assert torch.equal(frozen.user_embedding.weight, row_before)


def test_private_epochs_take_the_same_steps_as_the_generic_loop(
    catalog: Catalog, shard: UserShard
) -> None:
    """The fast private phase (item vectors once, no shared gradients) moves the user row
    exactly as the generic loop with the private optimizer alone would."""
    from fedrec.client import local as impl

    config = LocalTrainConfig(batch_size=16, private_lr=0.05, private_weight_decay=0.1)
    plan = [impl._epoch_examples(shard, config, np.random.default_rng(s)) for s in (1, 2)]
    rows = np.unique(np.concatenate([items for items, _ in plan]))
    local = [(np.searchsorted(rows, i), y) for i, y in plan]
    fast, generic = (impl._compact_copy(_model(catalog, shard), rows) for _ in range(2))
    row_before = fast.user_embedding.weight.detach().clone()
    shared_before = shared_state(fast)
    impl._private_epochs(
        fast, impl._private_optimizer([fast.user_embedding.weight], config), local, config
    )
    opt = impl._private_optimizer([generic.user_embedding.weight], config)
    impl._epochs(generic, [opt], local, config, None)
    assert not torch.equal(fast.user_embedding.weight, row_before)
    torch.testing.assert_close(
        fast.user_embedding.weight, generic.user_embedding.weight, atol=1e-6, rtol=1e-5
    )
    for key, value in shared_state(fast).items():
        assert torch.equal(value, shared_before[key]), key
    assert all(p.grad is None for p in fast.parameters())


def test_one_user_logits_equal_the_batched_forward(catalog: Catalog, shard: UserShard) -> None:
    from fedrec.client import local as impl

    model = _model(catalog, shard)
    items = torch.from_numpy(shard.train_items)
    with torch.no_grad():
        torch.testing.assert_close(impl._logits(model, items), model(ME.expand(len(items)), items))


def test_an_unknown_local_optimizer_is_rejected() -> None:
    with pytest.raises(ValueError, match="local optimizer must be one of"):
        LocalTrainConfig(optimizer="lbfgs")


def test_local_train_on_an_empty_shard(catalog: Catalog, shard: UserShard) -> None:
    empty = UserShard(shard.user_features, np.zeros(0, np.int64), NO_ITEM, NO_ITEM,
                      np.zeros(0, np.int64), shard.num_items)  # fmt: skip
    model = _model(catalog, shard)
    before = shared_state(model)
    assert local_train(model, empty, LocalTrainConfig(), np.random.default_rng(0)) == (0.0, 0)
    assert all(torch.equal(v, before[k]) for k, v in shared_state(model).items())


def test_proximal_term_keeps_shared_parameters_near_the_start(
    catalog: Catalog, shard: UserShard
) -> None:
    def drift(mu: float) -> tuple[float, float]:
        model = _model(catalog, shard)
        start = shared_state(model)
        user_start = model.user_embedding.weight.detach().clone()
        config = LocalTrainConfig(
            epochs=4, optimizer="adam", lr=0.05, batch_size=32, proximal_mu=mu
        )
        local_train(model, shard, config, np.random.default_rng(0))
        end = shared_state(model)
        shared = math.sqrt(sum(float(((end[k] - start[k]) ** 2).sum()) for k in start))
        user = float((model.user_embedding.weight.detach() - user_start).norm())
        return shared, user

    free, free_user = drift(0.0)
    tied, tied_user = drift(50.0)
    assert tied < 0.5 * free, (tied, free)
    assert free_user > 0 and tied_user > 0  # the private row is outside the proximal term


# --- evaluation -------------------------------------------------------------------------------
def test_local_evaluate_returns_the_eight_scalar_metrics(
    catalog: Catalog, shard: UserShard
) -> None:
    metrics = local_evaluate(_model(catalog, shard), shard)
    assert set(metrics) == EVAL_KEYS
    for key, value in metrics.items():
        assert type(value) is float, key
        assert 0.0 <= value <= 1.0, key


def test_local_evaluate_of_a_train_only_shard_is_empty(catalog: Catalog, shard: UserShard) -> None:
    train_only = UserShard(shard.user_features, shard.train_items[:2], NO_ITEM, NO_ITEM,
                           np.zeros(0, np.int64), shard.num_items)  # fmt: skip
    assert local_evaluate(_model(catalog, shard), train_only) == {}


def test_local_evaluate_reports_the_exposure_of_target_items(
    catalog: Catalog, shard: UserShard
) -> None:
    """Hand-made scores: of three targets the user has not seen, one ranks 1st, one 7th and
    one 14th among its unseen items; a target it trained on is not counted."""
    unseen = np.setdiff1d(np.arange(shard.num_items), [*shard.train_items, shard.val_item,
                                                        shard.test_item])  # fmt: skip
    targets = unseen[:3]
    scores = np.zeros(shard.num_items)
    scores[shard.train_items] = 100.0  # seen: never competitors
    scores[unseen[3:14]] = np.linspace(50.0, 40.0, 11)  # eleven unseen items in between
    scores[targets] = [60.0, 45.1, 39.0]  # 0-based ranks 0, 6 and 13
    model = _with_scores(_model(catalog, shard), scores)
    with_seen = np.array([*targets, shard.train_items[0]])
    metrics = local_evaluate(model, shard, targets=with_seen)
    assert metrics["er@5"] == pytest.approx(1 / 3) and metrics["er@10"] == pytest.approx(2 / 3)
    assert set(metrics) >= EVAL_KEYS and "er@5" not in local_evaluate(model, shard)
    assert "er@5" not in local_evaluate(model, shard, targets=shard.train_items[:2])


def test_local_evaluate_oracle(catalog: Catalog, shard: UserShard) -> None:
    """Hand-made scores with known ranks: the test item first, the validation item fourth."""
    scores = np.zeros(shard.num_items)
    scores[shard.train_items] = 100.0  # seen items score highest but are never competitors
    scores[shard.test_item] = 10.0
    scores[shard.val_item] = 4.0
    scores[shard.candidates[:3]] = 5.0  # three candidates above the validation item
    metrics = local_evaluate(_with_scores(_model(catalog, shard), scores), shard)
    assert metrics["hr@10"] == metrics["ndcg@10"] == 1.0
    assert metrics["full_hr@10"] == metrics["full_ndcg@10"] == 1.0
    # validation: rank 3 in both protocols (the test item is excluded from its full ranking)
    assert metrics["val-hr@10"] == metrics["val-full_hr@10"] == 1.0
    assert metrics["val-ndcg@10"] == pytest.approx(1 / math.log2(5))
    assert metrics["val-full_ndcg@10"] == pytest.approx(1 / math.log2(5))

    scores[shard.candidates[:10]] = 20.0  # ten candidates above the test item: a miss
    metrics = local_evaluate(_with_scores(_model(catalog, shard), scores), shard)
    assert metrics["hr@10"] == metrics["ndcg@10"] == 0.0
    assert metrics["full_hr@10"] == 0.0 and metrics["val-hr@10"] == 0.0


def test_local_evaluate_agrees_with_manual_scoring(catalog: Catalog, shard: UserShard) -> None:
    model = _model(catalog, shard, seed=4)
    local_train(model, shard, LocalTrainConfig(epochs=2), np.random.default_rng(0))
    metrics = local_evaluate(model, shard)
    with torch.no_grad():
        items = torch.arange(shard.num_items)
        scores = model(ME.expand(shard.num_items), items).numpy()  # forward, not score_all
    for prefix, target, other in (("val-", shard.val_item, shard.test_item),
                                  ("", shard.test_item, shard.val_item)):  # fmt: skip
        rank = int((scores[shard.candidates] >= scores[target]).sum())
        allowed = np.ones(shard.num_items, bool)
        allowed[shard.train_items] = allowed[other] = allowed[target] = False
        full_rank = int((scores[allowed] >= scores[target]).sum())
        assert metrics[prefix + "hr@10"] == float(rank < 10)
        assert metrics[prefix + "full_hr@10"] == float(full_rank < 10)
        expected = 1 / math.log2(full_rank + 2) if full_rank < 10 else 0.0
        assert metrics[prefix + "full_ndcg@10"] == pytest.approx(expected, abs=1e-9)


def test_a_low_rank_round_takes_the_sgd_step_on_the_factor(
    catalog: Catalog, shard: UserShard
) -> None:
    """One SGD step on the factor F (from zero) against the training basis B moves the
    table by ΔE = ΔF·B = −lr·G·BᵀB, G the table's gradient at the start (derived by
    hand here, from a plain backward pass on the full model); the update lies in B's span,
    and rows no example touched do not move."""
    from fedrec.client import local as impl
    from fedrec.common.colr import LowRank

    config = LocalTrainConfig(epochs=1, negatives=2, batch_size=100_000, lr=0.5)
    b = LowRank(3, 7).training_basis(DIM)
    start = _model(catalog, shard)
    items, labels = impl._epoch_examples(shard, config, np.random.default_rng(4))
    reference = copy.deepcopy(start)
    loss = nn.functional.binary_cross_entropy_with_logits(
        impl._logits(reference, torch.from_numpy(items)), torch.from_numpy(labels)
    )
    loss.backward()
    g = reference.item_embedding.weight.grad.numpy().astype(np.float64)
    model = copy.deepcopy(start)
    local_train(model, shard, config, np.random.default_rng(4), item_basis=b)
    delta = (model.item_embedding.weight - start.item_embedding.weight).detach().numpy()
    np.testing.assert_allclose(delta, -config.lr * g @ b.T @ b, atol=1e-6)
    q = LowRank(3, 7).basis(DIM)
    np.testing.assert_allclose(delta - delta @ q.T @ q, 0.0, atol=1e-6)  # in the span
    untouched = np.setdiff1d(np.arange(catalog.num_items), items)
    assert np.all(delta[untouched] == 0.0)
    assert np.abs(delta).max() > 1e-4  # it moved
    moved = (model.item_tower.weight - start.item_tower.weight).detach()  # trains as always
    assert float(moved.abs().max()) > 0


def test_fedprox_in_a_low_rank_round_penalizes_the_tables_own_update(
    catalog: Catalog, shard: UserShard
) -> None:
    """μ/2·‖ΔE‖² on the table itself (not on the factor, (r/d)·‖ΔE‖²): with the same μ the
    low-rank table moves less than without the term."""
    from fedrec.client import local as impl
    from fedrec.common.colr import LowRank

    b = LowRank(3, 7).training_basis(DIM)
    start = _model(catalog, shard)
    table = impl.FactoredTable(start.item_embedding.weight, b)
    with torch.no_grad():
        table.factor.normal_()
    compact = copy.deepcopy(start)
    compact.item_embedding = table  # type: ignore[assignment]
    anchor = {n: p.detach().clone() for n, p in compact.named_parameters()}
    term = impl._proximal_term(compact, anchor, mu=2.0)
    moved = float(((table.weight - table.start) ** 2).sum().detach())
    assert float(term) == pytest.approx(moved, rel=1e-5)  # μ/2 · ‖ΔE‖², nothing else moved
    moves = []
    for mu in (0.0, 0.5):
        config = LocalTrainConfig(epochs=2, negatives=2, proximal_mu=mu)
        model = _model(catalog, shard)
        local_train(model, shard, config, np.random.default_rng(4), item_basis=b)
        moves.append(float((model.item_embedding.weight - start.item_embedding.weight).norm()))
    assert moves[1] < moves[0]


# --- cold items (common/data/cold.py) ---------------------------------------------------------
@pytest.fixture(scope="module")
def cold_data() -> tuple[Interactions, Split]:
    data = load_interactions("synthetic", synthetic=SyntheticConfig(num_users=60, num_items=1000))
    return data, split_with_cold_items(data, seed=1, fraction=0.2)


def test_local_training_never_touches_a_cold_items_row(
    cold_data: tuple[Interactions, Split],
) -> None:
    """No positive and no negative is a cold item, so its id row leaves a device as it came."""
    data, split = cold_data
    assert split.cold is not None
    catalog = Catalog.of(data)
    for user in split.cold.users[:5]:
        shard = user_shard(data, split, int(user))
        model = _model(catalog, shard)
        before = model.item_embedding.weight.detach().clone()
        local_train(model, shard, LocalTrainConfig(epochs=3, lr=0.5), np.random.default_rng(0))
        after = model.item_embedding.weight.detach()
        cold = torch.from_numpy(split.cold.items)
        assert torch.equal(after[cold], before[cold])
        assert not torch.equal(after, before)  # the warm rows it trained on did move


def test_a_device_ranks_its_cold_target_as_the_central_evaluator_does(
    cold_data: tuple[Interactions, Split],
) -> None:
    data, split = cold_data
    assert split.cold is not None
    catalog = Catalog.of(data)
    torch.manual_seed(0)
    shape = ModelConfig(data.num_users, data.num_items, data.user_features.shape[1],
                        data.item_features.shape[1], id_dim=DIM, dim=DIM)  # fmt: skip
    central = SeedModel(shape, torch.from_numpy(data.user_features),
                        torch.from_numpy(data.item_features))  # fmt: skip
    for user in split.cold.users[:8]:
        shard = user_shard(data, split, int(user))
        row = {"user_embedding.weight": central.user_embedding.weight[int(user)][None].detach()}
        model = build_local_model(catalog, shard, DIM, shared_state(central), row, seed=0)
        device = local_evaluate(model, shard)
        expected = evaluate(central, split, "test", users=np.array([user]))
        for key in ("cold-hr@10", "cold-ndcg@10", "cold-full_hr@10", "cold-full_ndcg@10",
                    "hr@10", "full_hr@10"):  # fmt: skip
            assert device[key] == pytest.approx(expected[key], abs=1e-6), (user, key)
    without = UserShard(shard.user_features, shard.train_items, shard.val_item, shard.test_item,
                        shard.candidates, shard.num_items)  # fmt: skip
    assert not any(k.startswith("cold-") for k in local_evaluate(model, without))
