"""Tests for fedrec.client.local: on-device training and evaluation, in NumPy.

Every option is checked against a torch reference: the torch SeedModel (common/model.py)
trained with autograd and torch.optim on the same batches (the former client/local.py, kept
here only), compared after every optimizer step.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from fedrec.client import local as impl
from fedrec.client.local import (
    LocalModel,
    LocalTrainConfig,
    build_local_model,
    local_evaluate,
    local_train,
    refresh_user,
)
from fedrec.client.local_model import torch_normal
from fedrec.common.colr import LowRank
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
    shared_parameter_names,
    shared_state,
)
from fedrec.simulations.training import evaluate

DIM = 8
EVAL_KEYS = {
    "val-hr@10", "val-ndcg@10", "val-full_hr@10", "val-full_ndcg@10",
    "hr@10", "ndcg@10", "full_hr@10", "full_ndcg@10",
}  # fmt: skip
# float32 parity with torch, every step of two rounds: the two sum in different orders
# (~1e-7 relative per op). Measured: SGD, FedProx, CoLR and private epochs within 1e-6;
# Adam, whose m/√v amplifies it on coordinates with tiny gradients, 1.8e-6 at most
ATOL, RTOL = 5e-6, 1e-5
Params = dict[str, np.ndarray]


@pytest.fixture(scope="module")
def shard(data: Interactions, split: Split) -> UserShard:
    user = int(np.argmax(np.diff(split.train_indptr)))  # the user with the most train items
    return user_shard(data, split, user)


def _model(catalog: Catalog, shard: UserShard, seed: int = 0, item_ids: bool = True) -> LocalModel:
    shared = initial_shared_state(catalog, DIM, seed=seed, item_ids=item_ids)
    return build_local_model(catalog, shard, DIM, shared, None, seed=seed)


def _bce(model: LocalModel, items: np.ndarray, labels: np.ndarray) -> float:
    logits = torch.from_numpy(model.logits(items))
    target = torch.from_numpy(labels.astype(np.float32))
    return float(nn.functional.binary_cross_entropy_with_logits(logits, target))


def _with_scores(
    model: LocalModel, scores: np.ndarray, cold: np.ndarray | None = None
) -> LocalModel:
    """Make ``model`` score the catalog with ``scores`` and its cold items with ``cold``
    (an oracle for the ranking code)."""
    model.score_all = lambda: np.asarray(scores, np.float32)  # type: ignore[method-assign]
    if cold is not None:
        model.score_from_features = lambda items: cold  # type: ignore[method-assign]
    return model


def _moved(after: Mapping[str, np.ndarray], before: Mapping[str, np.ndarray]) -> bool:
    return all(not np.array_equal(after[k], before[k]) for k in before)


# --- the torch reference: the former client/local.py on the torch SeedModel ------------------
ME = torch.zeros(1, dtype=torch.long)  # the only user row of a device's model


def torch_twin(model: LocalModel) -> SeedModel:
    twin = SeedModel(
        model.config,
        torch.from_numpy(model.user_features),
        torch.from_numpy(model.item_features),
        initialize=False,
    )
    params = dict(twin.named_parameters())
    with torch.no_grad():
        for name, value in model.params.items():
            params[name].copy_(torch.from_numpy(value))
    return twin


class TorchFactoredTable(nn.Module):
    """E = E_start + A·B, only A trains (the former FactoredTable)."""

    start: torch.Tensor
    basis: torch.Tensor

    def __init__(self, start: torch.Tensor, basis: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("start", start.detach().clone())
        self.register_buffer("basis", torch.as_tensor(basis, dtype=start.dtype))
        self.factor = nn.Parameter(torch.zeros(start.shape[0], basis.shape[0]))

    @property
    def weight(self) -> torch.Tensor:
        return self.start + self.factor @ self.basis

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        return self.start[items] + self.factor[items] @ self.basis


def _snapshot(module: nn.Module) -> Params:
    return {n: p.detach().numpy().copy() for n, p in module.named_parameters()}


def reference_train(
    model: SeedModel,
    shard: UserShard,
    config: LocalTrainConfig,
    rng: np.random.Generator,
    item_basis: np.ndarray | None = None,
    steps: list[Params] | None = None,
) -> tuple[float, int]:
    """The torch local round (compact copy, optional factor, private then joint epochs);
    appends the compact copy's parameters after every optimizer step to ``steps``."""
    record = (lambda m: steps.append(_snapshot(m))) if steps is not None else (lambda m: None)
    private_plan = [impl._epoch_examples(shard, config, rng) for _ in range(config.private_epochs)]
    joint_plan = [impl._epoch_examples(shard, config, rng) for _ in range(config.epochs)]
    rows = np.unique(np.concatenate([items for items, _ in private_plan + joint_plan]))
    index = torch.from_numpy(rows)
    compact = SeedModel(
        ModelConfig(**{**model.config.__dict__, "num_items": len(rows)}),
        model.user_features,
        model.item_features[index],
        initialize=False,
    )
    state = dict(model.state_dict())
    if model.item_embedding is not None:
        state["item_embedding.weight"] = state["item_embedding.weight"][index]
    state["item_features"] = state["item_features"][index]
    compact.load_state_dict(state)
    if item_basis is not None:
        assert compact.item_embedding is not None
        table = TorchFactoredTable(compact.item_embedding.weight, item_basis)
        compact.item_embedding = table  # type: ignore[assignment]
    local = lambda plan: [(torch.from_numpy(np.searchsorted(rows, i)), torch.from_numpy(y))  # noqa: E731
                          for i, y in plan]  # fmt: skip
    params = dict(compact.named_parameters())
    private = [compact.user_embedding.weight]
    shared = [params[n] for n in shared_parameter_names(compact)]

    def adamw() -> torch.optim.Optimizer:
        return torch.optim.AdamW(
            private, lr=config.private_lr, weight_decay=config.private_weight_decay
        )

    def batches(
        plan: list[tuple[torch.Tensor, torch.Tensor]],
    ) -> Iterator[tuple[torch.Tensor, ...]]:
        for items, labels in plan:
            for s in range(0, len(items), config.batch_size):
                yield items[s : s + config.batch_size], labels[s : s + config.batch_size]

    def logits(items: torch.Tensor) -> torch.Tensor:
        return compact(ME.expand(len(items)), items)

    if private_plan:  # only the user row moves, through the same loss
        optimizer = adamw()
        for items, labels in batches(local(private_plan)):
            optimizer.zero_grad(set_to_none=True)
            nn.functional.binary_cross_entropy_with_logits(logits(items), labels).backward()
            optimizer.step()
            record(compact)
    anchor = {n: p.detach().clone() for n, p in compact.named_parameters()}
    shared_opt = (
        torch.optim.Adam(shared, lr=config.lr)
        if config.optimizer == "adam"
        else torch.optim.SGD(shared, lr=config.lr)
    )
    optimizers = [adamw(), shared_opt]
    total, seen = 0.0, 0
    for items, labels in batches(local(joint_plan)):
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.binary_cross_entropy_with_logits(logits(items), labels)
        if config.proximal_mu > 0:
            loss = loss + _reference_proximal(compact, anchor, config.proximal_mu)
        loss.backward()
        for optimizer in optimizers:
            optimizer.step()
        record(compact)
        total += float(loss.detach()) * len(items)
        seen += len(items)
    full = dict(model.named_parameters())
    with torch.no_grad():
        if compact.item_embedding is not None:
            full["item_embedding.weight"][index] = compact.item_embedding.weight
        for name, value in compact.named_parameters():
            if not name.startswith("item_embedding."):
                full[name].copy_(value)
    return total / max(seen, 1), seen


def _reference_proximal(
    model: SeedModel, anchor: Mapping[str, torch.Tensor], mu: float
) -> torch.Tensor:
    params = dict(model.named_parameters())
    table = model.item_embedding
    terms = [
        ((table.weight - table.start) ** 2).sum()
        if isinstance(table, TorchFactoredTable) and n == "item_embedding.factor"
        else ((params[n] - anchor[n]) ** 2).sum()
        for n in shared_parameter_names(model)
    ]
    return 0.5 * mu * sum(terms, torch.zeros(()))


def _numpy_steps(monkeypatch: pytest.MonkeyPatch) -> list[Params]:
    """Record the NumPy compact copy's parameters after every step (every batch)."""
    steps: list[Params] = []
    compacts: list[impl._Compact] = []
    make_copy, make_batches = impl._compact_copy, impl._batches

    def compact_copy(*args: object) -> impl._Compact:
        compacts.append(make_copy(*args))  # type: ignore[arg-type]
        return compacts[-1]

    def batches(
        plan: list[tuple[np.ndarray, np.ndarray]], size: int
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for batch in make_batches(plan, size):
            yield batch
            steps.append({n: p.copy() for n, p in compacts[-1].params.items()})

    monkeypatch.setattr(impl, "_compact_copy", compact_copy)
    monkeypatch.setattr(impl, "_batches", batches)
    return steps


def _assert_close(got: Mapping[str, np.ndarray], want: Mapping[str, np.ndarray], what: str) -> None:
    assert list(got) == list(want), what
    for name in want:
        np.testing.assert_allclose(
            got[name], want[name], atol=ATOL, rtol=RTOL, err_msg=f"{what}: {name}"
        )


# --- parity with torch, option by option ------------------------------------------------------
BASIS = LowRank(3, 7).training_basis(DIM)
SGD = LocalTrainConfig(epochs=2, lr=0.5, batch_size=32)
ADAM = LocalTrainConfig(epochs=2, optimizer="adam", lr=0.02, batch_size=32)


def _private(config: LocalTrainConfig, batch_size: int = 32) -> LocalTrainConfig:
    """``config`` with two private epochs first (AdamW with weight decay on the row)."""
    return replace(config, private_epochs=2, private_lr=0.05, private_weight_decay=0.1,
                   batch_size=batch_size)  # fmt: skip


# name: (config, with the item-id table, a low-rank round)
PARITY: dict[str, tuple[LocalTrainConfig, bool, bool]] = {
    "sgd": (SGD, True, False),
    "adam": (ADAM, True, False),
    "private-epochs": (_private(SGD), True, False),
    "adam-private-epochs": (_private(ADAM, batch_size=16), True, False),
    "fedprox": (replace(SGD, proximal_mu=0.5), True, False),
    "fedprox-adam": (replace(ADAM, proximal_mu=2.0), True, False),
    "colr": (SGD, True, True),
    "colr-fedprox": (replace(SGD, proximal_mu=0.5), True, True),
    "colr-adam-fedprox-private": (_private(replace(ADAM, proximal_mu=1.0)), True, True),
    "no-item-ids": (replace(SGD, private_epochs=1), False, False),
    "no-item-ids-adam-fedprox": (replace(ADAM, proximal_mu=0.5), False, False),
}


@pytest.mark.parametrize("name", list(PARITY))
def test_numpy_training_equals_torch_after_every_step(
    catalog: Catalog, shard: UserShard, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    config, item_ids, low_rank = PARITY[name]
    basis = BASIS if low_rank else None
    model = _model(catalog, shard, item_ids=item_ids)
    twin = torch_twin(model)
    want: list[Params] = []
    steps = _numpy_steps(monkeypatch)
    for round_ in range(2):  # a second round starts from the first's (private row included)
        rng = np.random.default_rng([7, round_])
        want_result = reference_train(twin, shard, config, np.random.default_rng([7, round_]),
                                      basis, want)  # fmt: skip
        got_result = local_train(model, shard, config, rng, basis)
        assert len(steps) == len(want) > 2
        for i, (got, expected) in enumerate(zip(steps, want, strict=True)):
            _assert_close(got, expected, f"round {round_} step {i}")
        assert got_result[1] == want_result[1]
        assert got_result[0] == pytest.approx(want_result[0], rel=1e-5)
        _assert_close(model.params, _snapshot(twin), f"round {round_}, written back")
        assert model.shared_names() == shared_parameter_names(twin)
    assert _moved(model.shared_state(), _model(catalog, shard, item_ids=item_ids).shared_state())


def test_refresh_user_equals_torch(catalog: Catalog, shard: UserShard) -> None:
    config = LocalTrainConfig(private_lr=0.05, private_weight_decay=0.1)
    model = _model(catalog, shard)
    twin = torch_twin(model)
    refresh_user(model, shard, config, 3, np.random.default_rng(5))
    reference_train(twin, shard, LocalTrainConfig(epochs=0, private_epochs=3, private_lr=0.05,
                                                   private_weight_decay=0.1),
                    np.random.default_rng(5))  # fmt: skip
    _assert_close(model.params, _snapshot(twin), "refreshed")


def test_forward_and_scores_equal_the_torch_model(catalog: Catalog, shard: UserShard) -> None:
    for item_ids in (True, False):
        model = _model(catalog, shard, seed=3, item_ids=item_ids)
        local_train(model, shard, LocalTrainConfig(epochs=2), np.random.default_rng(0))
        twin = torch_twin(model)
        items = np.arange(catalog.num_items)
        with torch.no_grad():
            forward = twin(ME.expand(len(items)), torch.from_numpy(items)).numpy()
            score_all = twin.score_all(ME)[0].numpy()
            cold = twin.score_from_features(ME, torch.from_numpy(items[:50]))[0].numpy()
        np.testing.assert_allclose(model.logits(items), forward, atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(model.score_all(), score_all, atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(model.score_from_features(items[:50]), cold, atol=1e-5,
                                   rtol=1e-5)  # fmt: skip


def test_evaluation_metrics_equal_those_of_the_torch_scores(
    catalog: Catalog, shard: UserShard
) -> None:
    """The metrics of a trained model (exposure of targets included) are those of the torch
    model's scores: the ranking code is shared, the scores agree to float32 noise."""
    model = _model(catalog, shard, seed=4)
    local_train(model, shard, LocalTrainConfig(epochs=2), np.random.default_rng(0))
    with torch.no_grad():
        scores = torch_twin(model).score_all(ME)[0].numpy()
    targets = np.arange(5)
    metrics = local_evaluate(model, shard, targets=targets)
    assert set(metrics) == EVAL_KEYS | {"er@5", "er@10"}
    assert metrics == local_evaluate(_with_scores(_model(catalog, shard), scores), shard,
                                     targets=targets)  # fmt: skip


# --- building ---------------------------------------------------------------------------------
def test_build_local_model_takes_shared_and_private_state(
    catalog: Catalog, shard: UserShard
) -> None:
    shared = initial_shared_state(catalog, DIM, seed=3)
    private = {
        "user_embedding.weight": np.full((1, DIM), 0.5, np.float32),
        "user_features": shard.user_features[None, :].copy(),
    }
    model = build_local_model(catalog, shard, DIM, shared, private, seed=0)
    assert list(model.shared_state()) == list(shared)
    for key, value in model.shared_state().items():
        np.testing.assert_array_equal(value, shared[key].numpy())
        assert value.dtype == np.float32
    np.testing.assert_array_equal(model.user_row, np.full((1, DIM), 0.5))
    # without private state the user row comes from the seed: reproducible, seed-dependent
    a = build_local_model(catalog, shard, DIM, shared, None, seed=1).user_row
    b = build_local_model(catalog, shard, DIM, shared, None, seed=1).user_row
    c = build_local_model(catalog, shard, DIM, shared, None, seed=2).user_row
    assert np.array_equal(a, b) and not np.array_equal(a, c)


@pytest.mark.parametrize("size", [1, 8, 15, 16, 17, 32, 40, 64])
def test_a_first_user_row_is_torchs_seeded_draw(size: int) -> None:
    """The first row is what the torch model drew (torch.Generator().manual_seed(seed)), so
    seeded runs keep their users' starting rows."""
    for seed in (0, 1, 12345, 2**31 - 1):
        want = torch.empty(size).normal_(0.0, 0.1, generator=torch.Generator().manual_seed(seed))
        np.testing.assert_allclose(torch_normal(seed, size, 0.1), want.numpy(), atol=1e-7, rtol=0)


def test_build_local_model_refuses_a_foreign_state(catalog: Catalog, shard: UserShard) -> None:
    shared = {k: v.numpy() for k, v in initial_shared_state(catalog, DIM, seed=0).items()}
    with pytest.raises(ValueError, match=r"shared state mismatch: missing \['head.bias'\]"):
        build_local_model(catalog, shard, DIM, {k: v for k, v in shared.items()
                                                if k != "head.bias"}, None, 0)  # fmt: skip
    with pytest.raises(ValueError, match=r"unexpected \['extra'\]"):
        build_local_model(catalog, shard, DIM, {**shared, "extra": np.zeros(1)}, None, 0)
    with pytest.raises(ValueError, match=r"'head.weight'.*\(1, 8\).*\(1, 9\)"):
        build_local_model(catalog, shard, DIM, {**shared, "head.weight": np.zeros((1, 9))},
                          None, 0)  # fmt: skip
    with pytest.raises(ValueError, match=r"private state 'user_embedding.weight'"):
        build_local_model(catalog, shard, DIM, shared,
                          {"user_embedding.weight": np.zeros((1, 9))}, 0)  # fmt: skip


def test_offline_from_scratch_builds_a_full_model(catalog: Catalog, shard: UserShard) -> None:
    a = build_local_model(catalog, shard, DIM, None, None, seed=1)
    b = build_local_model(catalog, shard, DIM, None, None, seed=1)
    assert list(a.params) == [n for n, _ in torch_twin(a).named_parameters()]
    assert all(np.array_equal(a.params[k], b.params[k]) for k in a.params)
    assert all(v.dtype == np.float32 for v in a.params.values())


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
    assert model.item_table is None
    negatives = shard.sample_negatives(4 * len(shard.train_items), np.random.default_rng(9))
    items = np.concatenate([shard.train_items, negatives])
    labels = np.concatenate([np.ones(len(shard.train_items)), np.zeros(len(negatives))])
    before = _bce(model, items, labels)
    for round_ in range(4):
        local_train(model, shard, LocalTrainConfig(epochs=1), np.random.default_rng(round_))
    assert _bce(model, items, labels) < before * 0.9, before
    after = model.shared_state()
    assert list(after) == list(shared)
    assert _moved(after, {k: v.numpy() for k, v in shared.items()})


def test_local_train_touches_nothing_but_the_model(catalog: Catalog, shard: UserShard) -> None:
    shared = {k: v.numpy() for k, v in initial_shared_state(catalog, DIM, seed=0).items()}
    shared_before = {k: v.copy() for k, v in shared.items()}
    model = build_local_model(catalog, shard, DIM, shared, None, seed=0)
    item_features = catalog.item_features.copy()
    shard_before = (shard.train_items.copy(), shard.candidates.copy(), shard.user_features.copy())
    features_before = (model.user_features.copy(), model.item_features.copy())
    np_rng = np.random.get_state()
    params_before = model.shared_state()

    local_train(model, shard, LocalTrainConfig(epochs=2), np.random.default_rng(0))

    # the server's arrays are not aliased by the model, so they keep the round's start
    for key, value in shared.items():
        assert np.array_equal(value, shared_before[key]), key
    np.testing.assert_array_equal(catalog.item_features, item_features)
    np.testing.assert_array_equal(shard.train_items, shard_before[0])
    np.testing.assert_array_equal(shard.candidates, shard_before[1])
    np.testing.assert_array_equal(shard.user_features, shard_before[2])
    np.testing.assert_array_equal(model.user_features, features_before[0])  # not trained
    np.testing.assert_array_equal(model.item_features, features_before[1])
    assert all(np.array_equal(a, b) if isinstance(a, np.ndarray) else a == b
               for a, b in zip(np.random.get_state(), np_rng, strict=True))  # fmt: skip
    # ... while the model itself did train, shared and private parameters alike
    assert _moved(model.shared_state(), params_before)
    assert all(v.dtype == np.float32 for v in model.params.values())


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_compact_training_equals_training_the_full_table(
    catalog: Catalog, shard: UserShard, optimizer: str
) -> None:
    # Local training runs on a copy holding only the touched item rows. Against training
    # the full table on the same examples, every parameter must match exactly, and rows
    # never touched (e.g. the evaluation candidates) must be bit-identical to before.
    config = LocalTrainConfig(epochs=1, negatives=1, optimizer=optimizer, lr=0.05)
    start = _model(catalog, shard)
    plan = [impl._epoch_examples(shard, config, np.random.default_rng(3))]
    everything = np.arange(catalog.num_items)
    reference = impl._compact_copy(start, everything, None)
    impl._epochs(reference, plan, config, anchor=None)
    model = _model(catalog, shard)
    rows = np.unique(plan[0][0])
    compact = impl._compact_copy(model, rows, None)
    impl._epochs(compact, [(np.searchsorted(rows, plan[0][0]), plan[0][1])], config, None)
    impl._write_back(model, compact, rows)
    for name, want in reference.params.items():
        np.testing.assert_allclose(model.params[name], want, rtol=1e-6, atol=1e-7, err_msg=name)
    untouched = start.item_table[shard.candidates]  # type: ignore[index]
    assert np.array_equal(model.item_table[shard.candidates], untouched)  # type: ignore[index]


def test_shared_parameters_take_sgd_steps_and_the_user_row_adam(
    catalog: Catalog, shard: UserShard
) -> None:
    """One batch: shared moves by exactly −lr·∇, the private row by AdamW's first step
    (the gradient from torch autograd on the same model)."""
    config = LocalTrainConfig(
        epochs=1, negatives=0, lr=0.7, private_lr=0.03, private_weight_decay=0.5,
        batch_size=10_000,
    )  # fmt: skip
    model = _model(catalog, shard)
    reference = torch_twin(model)
    items = torch.from_numpy(shard.train_items)
    loss = nn.functional.binary_cross_entropy_with_logits(
        reference(ME.expand(len(items)), items), torch.ones(len(items))
    )
    loss.backward()
    local_train(model, shard, config, np.random.default_rng(0))
    for name, start in reference.named_parameters():
        grad, param = start.grad, torch.from_numpy(model.params[name])
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
    shared_before = model.shared_state()
    row_before = model.user_row.copy()
    negatives = shard.sample_negatives(4 * len(shard.train_items), np.random.default_rng(9))
    items = np.concatenate([shard.train_items, negatives])
    labels = np.concatenate([np.ones(len(shard.train_items)), np.zeros(len(negatives))])
    before = _bce(model, items, labels)
    refresh_user(model, shard, LocalTrainConfig(), 3, np.random.default_rng(0))
    for key, value in model.shared_state().items():  # bit-identical shared group
        assert np.array_equal(value, shared_before[key]), key
    assert not np.array_equal(model.user_row, row_before)
    assert _bce(model, items, labels) < before  # fits the user's own data better
    frozen = _model(catalog, shard)
    refresh_user(frozen, shard, LocalTrainConfig(), 0, np.random.default_rng(0))  # 0: no-op
    assert np.array_equal(frozen.user_row, row_before)


def test_private_epochs_take_the_same_steps_as_the_generic_backward(
    catalog: Catalog, shard: UserShard
) -> None:
    """The fast private phase (item vectors once, no shared gradients) moves the user row
    exactly as AdamW on the generic backward's user-row gradient would."""
    config = LocalTrainConfig(batch_size=16, private_lr=0.05, private_weight_decay=0.1)
    plan = [impl._epoch_examples(shard, config, np.random.default_rng(s)) for s in (1, 2)]
    rows = np.unique(np.concatenate([items for items, _ in plan]))
    local = [(np.searchsorted(rows, i), y) for i, y in plan]
    fast, generic = (impl._compact_copy(_model(catalog, shard), rows, None) for _ in range(2))
    row_before, shared_before = (
        fast.params["user_embedding.weight"].copy(),
        fast.model.shared_state(),
    )
    impl._private_epochs(fast, impl._private_optimizer(config), local, config)
    optimizer = impl._private_optimizer(config)
    for batch, target in impl._batches(local, config.batch_size):
        _, grads = impl._loss_and_grads(generic, batch, target)
        optimizer.step(generic.params, {"user_embedding.weight": grads["user_embedding.weight"]})
    row = fast.params["user_embedding.weight"]
    assert not np.array_equal(row, row_before)
    np.testing.assert_allclose(row, generic.params["user_embedding.weight"], atol=1e-6, rtol=1e-5)
    for key, value in fast.model.shared_state().items():
        assert np.array_equal(value, shared_before[key]), key


def test_an_unknown_local_optimizer_is_rejected() -> None:
    with pytest.raises(ValueError, match="local optimizer must be one of"):
        LocalTrainConfig(optimizer="lbfgs")


def test_local_train_on_an_empty_shard(catalog: Catalog, shard: UserShard) -> None:
    empty = UserShard(shard.user_features, np.zeros(0, np.int64), NO_ITEM, NO_ITEM,
                      np.zeros(0, np.int64), shard.num_items)  # fmt: skip
    model = _model(catalog, shard)
    before = model.shared_state()
    assert local_train(model, empty, LocalTrainConfig(), np.random.default_rng(0)) == (0.0, 0)
    assert all(np.array_equal(v, before[k]) for k, v in model.shared_state().items())


def test_proximal_term_keeps_shared_parameters_near_the_start(
    catalog: Catalog, shard: UserShard
) -> None:
    def drift(mu: float) -> tuple[float, float]:
        model = _model(catalog, shard)
        start = model.shared_state()
        user_start = model.user_row.copy()
        config = LocalTrainConfig(
            epochs=4, optimizer="adam", lr=0.05, batch_size=32, proximal_mu=mu
        )
        local_train(model, shard, config, np.random.default_rng(0))
        end = model.shared_state()
        shared = math.sqrt(sum(float(((end[k] - start[k]) ** 2).sum()) for k in start))
        return shared, float(np.linalg.norm(model.user_row - user_start))

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
    scores = model.logits(np.arange(shard.num_items))  # forward, not score_all
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
    table by ΔE = ΔF·B = −lr·G·BᵀB, G the table's gradient at the start (torch autograd on
    the full model); the update lies in B's span, and rows no example touched do not move."""
    config = LocalTrainConfig(epochs=1, negatives=2, batch_size=100_000, lr=0.5)
    b = LowRank(3, 7).training_basis(DIM)
    start = _model(catalog, shard)
    items, labels = impl._epoch_examples(shard, config, np.random.default_rng(4))
    reference = torch_twin(start)
    items_t = torch.from_numpy(items)
    loss = nn.functional.binary_cross_entropy_with_logits(
        reference(ME.expand(len(items)), items_t), torch.from_numpy(labels)
    )
    loss.backward()
    assert reference.item_embedding is not None and reference.item_embedding.weight.grad is not None
    g = reference.item_embedding.weight.grad.numpy().astype(np.float64)
    model = _model(catalog, shard)
    local_train(model, shard, config, np.random.default_rng(4), item_basis=b)
    delta = model.params["item_embedding.weight"] - start.params["item_embedding.weight"]
    np.testing.assert_allclose(delta, -config.lr * g @ b.T @ b, atol=1e-6)
    q = LowRank(3, 7).basis(DIM)
    np.testing.assert_allclose(delta - delta @ q.T @ q, 0.0, atol=1e-6)  # in the span
    untouched = np.setdiff1d(np.arange(catalog.num_items), items)
    assert np.all(delta[untouched] == 0.0)
    assert np.abs(delta).max() > 1e-4  # it moved
    moved = model.params["item_tower.weight"] - start.params["item_tower.weight"]
    assert float(np.abs(moved).max()) > 0  # trains as always


def test_fedprox_in_a_low_rank_round_penalizes_the_tables_own_update(
    catalog: Catalog, shard: UserShard
) -> None:
    """μ/2·‖ΔE‖² on the table itself (not on the factor, (r/d)·‖ΔE‖²): with the same μ the
    low-rank table moves less than without the term."""
    b = LowRank(3, 7).training_basis(DIM)
    start = _model(catalog, shard)
    rows = np.arange(catalog.num_items)
    compact = impl._compact_copy(start, rows, b)
    assert compact.factored is not None
    compact.factored.factor[...] = np.random.default_rng(0).normal(
        size=compact.factored.factor.shape
    )
    anchor = {n: p.copy() for n, p in compact.params.items()}
    grads = {n: np.zeros_like(p) for n, p in compact.params.items()}
    term = impl._proximal(compact, anchor, 2.0, grads)
    moved = float(((compact.factored.weight - compact.factored.start) ** 2).sum())
    assert float(term) == pytest.approx(moved, rel=1e-5)  # μ/2 · ‖ΔE‖², nothing else moved
    with pytest.raises(ValueError, match="item basis of shape"):
        impl.FactoredTable.of(start.params["item_embedding.weight"], b[:, :3])
    moves = []
    for mu in (0.0, 0.5):
        config = LocalTrainConfig(epochs=2, negatives=2, proximal_mu=mu)
        model = _model(catalog, shard)
        local_train(model, shard, config, np.random.default_rng(4), item_basis=b)
        change = model.params["item_embedding.weight"] - start.params["item_embedding.weight"]
        moves.append(float(np.linalg.norm(change)))
    assert moves[1] < moves[0]


def test_a_low_rank_round_needs_the_item_table(catalog: Catalog, shard: UserShard) -> None:
    model = _model(catalog, shard, item_ids=False)
    with pytest.raises(ValueError, match="needs the model's item-id table"):
        local_train(model, shard, LocalTrainConfig(), np.random.default_rng(0), item_basis=BASIS)


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
        before = model.params["item_embedding.weight"].copy()
        local_train(model, shard, LocalTrainConfig(epochs=3, lr=0.5), np.random.default_rng(0))
        after = model.params["item_embedding.weight"]
        cold = split.cold.items
        assert np.array_equal(after[cold], before[cold])
        assert not np.array_equal(after, before)  # the warm rows it trained on did move


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


def test_cold_metrics_equal_those_of_the_torch_scores(
    cold_data: tuple[Interactions, Split],
) -> None:
    """A trained device model's cold metrics are those of the torch model's feature scores."""
    data, split = cold_data
    assert split.cold is not None
    catalog = Catalog.of(data)
    checked = 0
    for user in split.cold.users[:6]:
        shard = user_shard(data, split, int(user))
        if shard.cold is None or not shard.cold.ranked:
            continue
        model = _model(catalog, shard, seed=int(user))
        local_train(model, shard, LocalTrainConfig(epochs=2, private_epochs=1),
                    np.random.default_rng(int(user)))  # fmt: skip
        twin = torch_twin(model)
        with torch.no_grad():
            cold = twin.score_from_features(ME, torch.from_numpy(shard.cold.items))[0].numpy()
        np.testing.assert_allclose(model.score_from_features(shard.cold.items), cold,
                                   atol=1e-5, rtol=1e-5)  # fmt: skip
        with torch.no_grad():
            warm = twin.score_all(ME)[0].numpy()
        oracle = _with_scores(_model(catalog, shard, seed=int(user)), warm, cold=cold)
        got = local_evaluate(model, shard)
        assert any(k.startswith("cold-") for k in got)
        assert got == local_evaluate(oracle, shard)
        checked += 1
    assert checked >= 3
