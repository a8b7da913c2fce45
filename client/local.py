"""What a device does with its own data: train and evaluate, with no server needed (it ranks
the catalog with the model's NumPy inference bundle, fedrec.common.bundle, not here).

The local model is the seed model with a single user row (this device's user). Its shared
parameters come from the server each round; its private parameters (the user-id embedding and
the user features) come from the device's own state store and never leave it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from fedrec.common import keys
from fedrec.common.data.catalog import Catalog
from fedrec.common.data.cold import ColdShard, cold_ranks
from fedrec.common.data.shard import UserShard
from fedrec.common.fedconfig import LOCAL_OPTIMIZERS
from fedrec.common.metrics import exposure, held_out_ranks, known_positive_mask, summarize
from fedrec.common.model import (
    ITEM_TABLE,
    SeedModel,
    device_model,
    load_private_state,
    load_shared_state,
    shared_parameter_names,
)

__all__ = [
    "ME",
    "FactoredTable",
    "LocalTrainConfig",
    "build_local_model",
    "local_evaluate",
    "local_train",
    "refresh_user",
]

ME = torch.zeros(1, dtype=torch.long)  # the only user row of a device's model


@dataclass(frozen=True)
class LocalTrainConfig:
    """How a device trains in one round.

    The two parameter groups get different optimizers. The **shared** group takes plain SGD
    steps by default: the server's adaptive optimizer (FedAdam) then sees an average of
    gradient-proportional updates. A fresh Adam on the device instead moves every touched
    coordinate by ~``lr`` per step whatever its gradient (Adam's first steps are sign-like),
    and measured on ml-100k that noise stalled the federation at HR@10 ≈ 0.35. The
    **private** user embedding never leaves the device and is fitted with Adam at
    ``private_lr`` (AdamW with ``private_weight_decay``, as the centralized trainer).
    """

    epochs: int = 1  # passes over the user's train items per round
    lr: float = 1.0  # learning rate of the shared parameters
    optimizer: str = "sgd"  # optimizer of the shared parameters: sgd | adam
    batch_size: int = 64
    negatives: int = 4  # sampled negatives per positive
    proximal_mu: float = 0.0  # FedProx: μ/2·‖w − w_global‖² on the shared parameters
    private_epochs: int = 0  # epochs fitting only the private user embedding, before the rest
    private_lr: float = 0.1  # Adam learning rate of the private user embedding
    private_weight_decay: float = 0.0  # its decoupled weight decay (AdamW)

    def __post_init__(self) -> None:
        if self.optimizer not in LOCAL_OPTIMIZERS:
            raise ValueError(
                f"local optimizer must be one of {LOCAL_OPTIMIZERS}, got {self.optimizer!r}"
            )


def build_local_model(
    catalog: Catalog,
    shard: UserShard,
    dim: int,
    shared: Mapping[str, torch.Tensor] | None,
    private: Mapping[str, torch.Tensor] | None,
    seed: int,
) -> SeedModel:
    """A one-user seed model: server's shared weights + this device's private state.

    Without stored private state (first participation) the user embedding is initialised
    from ``seed``, so a device's first round is reproducible. A local generator is used, not
    ``torch.manual_seed``: that call also reseeds every accelerator backend, on every call.
    The shared group says whether the model has an item-id table (``item-ids``); a device
    working offline from scratch builds the default one, with it.
    """
    if shared is None:  # no server arrays (a device working offline from scratch)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = device_model(catalog, dim, shard.user_features)
    else:  # every parameter is set below: skip initialising the tables
        item_ids = ITEM_TABLE in shared
        with torch.random.fork_rng(devices=[]):
            model = device_model(
                catalog, dim, shard.user_features, initialize=False, item_ids=item_ids
            )
        load_shared_state(model, shared)
    if private is not None:  # the stored row; the features are the shard's (they may change)
        load_private_state(model, {**private, "user_features": model.user_features.clone()})
    else:
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            model.user_embedding.weight.normal_(0.0, model.config.init_std, generator=generator)
    return model


def local_train(
    model: SeedModel,
    shard: UserShard,
    config: LocalTrainConfig,
    rng: np.random.Generator,
    item_basis: np.ndarray | None = None,
) -> tuple[float, int]:
    """Train on the user's items + fresh leak-free negatives; returns (mean loss, examples).

    With ``private_epochs`` > 0 the user embedding is first fitted alone against the current
    global item vectors (as in federated collaborative filtering, Ammad-ud-din et al., 2019),
    so the joint epochs that follow send the server item updates computed with a user vector
    that already describes this user rather than a stale or random one.

    Training runs on a compact copy holding only the item rows this round touches (the
    user's items and the sampled negatives): rows outside it get no gradient and would not
    move under Adam anyway, so the result is the same while the device's memory and time no
    longer grow with the catalog. The trained rows are written back into ``model``.

    With ``item_basis`` B (r × id_dim, orthonormal rows: a low-rank round, common/colr.py)
    the item table trains as E_start + A·B, A (rows × r) the only table parameter, from
    zero: the table's update is a rank-r factor against B (CoLR).
    """
    if len(shard.train_items) == 0:
        return 0.0, 0
    private_plan = [_epoch_examples(shard, config, rng) for _ in range(config.private_epochs)]
    joint_plan = [_epoch_examples(shard, config, rng) for _ in range(config.epochs)]
    rows = np.unique(np.concatenate([items for items, _ in private_plan + joint_plan]))
    compact = _compact_copy(model, rows)
    if item_basis is not None:
        if compact.item_embedding is None:
            raise ValueError("a low-rank round (colr-rank) needs the model's item-id table")
        # duck-typed: SeedModel reads only .weight and a lookup from its item table
        compact.item_embedding = FactoredTable(compact.item_embedding.weight, item_basis)  # type: ignore[assignment]
    local = lambda plan: [(np.searchsorted(rows, i), y) for i, y in plan]  # noqa: E731
    params = dict(compact.named_parameters())
    private = [compact.user_embedding.weight]
    shared = [params[n] for n in shared_parameter_names(compact)]
    if private_plan:
        _private_epochs(compact, _private_optimizer(private, config), local(private_plan), config)
    anchor = (
        {n: p.detach().clone() for n, p in compact.named_parameters()}
        if config.proximal_mu > 0
        else None
    )
    optimizers = [_private_optimizer(private, config), _shared_optimizer(shared, config)]
    result = _epochs(compact, optimizers, local(joint_plan), config, anchor)
    _write_back(model, compact, rows)
    return result


def _private_optimizer(
    params: Sequence[torch.Tensor], config: LocalTrainConfig
) -> torch.optim.Optimizer:
    return torch.optim.AdamW(
        params, lr=config.private_lr, weight_decay=config.private_weight_decay, fused=True
    )


def _shared_optimizer(
    params: Sequence[torch.Tensor], config: LocalTrainConfig
) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, fused=True)
    return torch.optim.SGD(params, lr=config.lr)


def _epoch_examples(
    shard: UserShard, config: LocalTrainConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One shuffled epoch: (items (N,), labels (N,) float32) with fresh negatives."""
    examples = shard.examples(config.negatives, rng)
    return examples.items, examples.labels


def _compact_copy(model: SeedModel, rows: np.ndarray) -> SeedModel:
    """A SeedModel over the catalog rows ``rows`` only, with ``model``'s current values."""
    index = torch.from_numpy(rows)
    config = replace(model.config, num_items=len(rows))
    with torch.random.fork_rng(devices=[]):  # the towers' init is overwritten: spare the RNG
        compact = SeedModel(
            config, model.user_features, model.item_features[index], initialize=False
        )
    state = dict(model.state_dict())
    if ITEM_TABLE in state:
        state[ITEM_TABLE] = state[ITEM_TABLE][index]
    state["item_features"] = state["item_features"][index]
    compact.load_state_dict(state)
    return compact


class FactoredTable(nn.Module):
    """An item table E = E_start + A·B that trains only A (rows × r, from zero) against the
    fixed basis B: what ``SeedModel`` reads from ``item_embedding`` (``weight`` and a
    lookup), so the model trains it unchanged."""

    start: torch.Tensor
    basis: torch.Tensor

    def __init__(self, start: torch.Tensor, basis: np.ndarray) -> None:
        super().__init__()
        if basis.ndim != 2 or basis.shape[1] != start.shape[1]:
            raise ValueError(
                f"item basis of shape {basis.shape} for a table {tuple(start.shape)} wide"
            )
        self.register_buffer("start", start.detach().clone())
        self.register_buffer("basis", torch.as_tensor(basis, dtype=start.dtype))
        self.factor = nn.Parameter(torch.zeros(start.shape[0], basis.shape[0], dtype=start.dtype))

    @property
    def weight(self) -> torch.Tensor:
        return self.start + self.factor @ self.basis

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        return self.start[items] + self.factor[items] @ self.basis


def _write_back(model: SeedModel, compact: SeedModel, rows: np.ndarray) -> None:
    full = dict(model.named_parameters())
    with torch.no_grad():
        if compact.item_embedding is not None:
            full[ITEM_TABLE][torch.from_numpy(rows)] = compact.item_embedding.weight
        for name, value in compact.named_parameters():
            if not name.startswith("item_embedding."):
                full[name].copy_(value)


def _epochs(
    model: SeedModel,
    optimizers: list[torch.optim.Optimizer],
    plan: list[tuple[np.ndarray, np.ndarray]],
    config: LocalTrainConfig,
    anchor: Mapping[str, torch.Tensor] | None,
) -> tuple[float, int]:
    loss_fn = nn.BCEWithLogitsLoss()
    total, seen = 0.0, 0
    model.train()
    for batch, target in _batches(plan, config.batch_size):
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(_logits(model, batch), target)
        if anchor is not None and config.proximal_mu > 0:
            loss = loss + _proximal_term(model, anchor, config.proximal_mu)
        loss.backward()
        for optimizer in optimizers:
            optimizer.step()
        total += float(loss.detach()) * len(batch)
        seen += len(batch)
    return total / max(seen, 1), seen


def _batches(
    plan: list[tuple[np.ndarray, np.ndarray]], batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The (items, labels) mini-batches of a plan of epochs, in order."""
    for items, labels in plan:
        items_t, labels_t = torch.from_numpy(items), torch.from_numpy(labels)
        for start in range(0, len(items_t), batch_size):
            yield items_t[start : start + batch_size], labels_t[start : start + batch_size]


def _private_epochs(
    model: SeedModel,
    optimizer: torch.optim.Optimizer,
    plan: list[tuple[np.ndarray, np.ndarray]],
    config: LocalTrainConfig,
) -> None:
    """Epochs that move only the user row e: the same batches, loss and optimizer steps as
    :func:`_epochs` with the private optimizer alone, at a fraction of its cost.

    Everything but e is a constant here, so the item vectors v, the head (w, b) and the
    feature part of the user tower are computed once, and the gradient of the mean BCE with
    respect to e is written out (no autograd graph, no gradient for a shared parameter):
        z = W_e e + (W_f f + b_u),  u = ReLU(z),  logit_j = w·(u ⊙ v_j) + b,
        ∂L/∂e = W_eᵀ [1(z > 0) ⊙ w ⊙ Σ_j v_j (σ(logit_j) − y_j) / B].
    tests/client/test_local.py checks it against the generic loop step by step.
    """
    e = model.user_embedding.weight  # (1, id_dim): the only parameter that moves
    with torch.no_grad():
        v = model.item_vectors()  # (rows of the compact copy, dim)
        w, b = model.head.weight[0], model.head.bias[0]
        tower = model.user_tower.weight
        w_e = tower[:, : e.shape[1]]
        c = tower[:, e.shape[1] :] @ model.user_features[0] + model.user_tower.bias
        for batch, target in _batches(plan, config.batch_size):
            vb = v[batch]  # (B, dim)
            z = w_e @ e[0] + c
            u = torch.relu(z)
            residual = (torch.sigmoid(vb @ (u * w) + b) - target) / len(vb)
            grad_z = (vb.T @ residual) * w * (z > 0)
            e.grad = (w_e.T @ grad_z)[None, :]
            optimizer.step()
    e.grad = None


def _logits(model: SeedModel, items: torch.Tensor) -> torch.Tensor:
    """``model(ME.expand(B), items)`` with the one user vector computed once, not B times."""
    u = model.user_vectors(ME)  # (1, dim), broadcast over the batch
    return model.head(u * model.item_vectors(items)).squeeze(-1)


def _proximal_term(model: SeedModel, anchor: Mapping[str, torch.Tensor], mu: float) -> torch.Tensor:
    """FedProx (Li et al., 2020): μ/2 · ‖w − w_t‖² over the shared parameters."""
    params = dict(model.named_parameters())
    table = model.item_embedding
    shared = [
        # a low-rank round: the table's own ‖ΔE‖² (= (d/r)·‖F‖² with the training basis)
        (table.weight - table.start, torch.zeros(()))
        if isinstance(table, FactoredTable) and n == "item_embedding.factor"
        else (params[n], anchor[n])
        for n in shared_parameter_names(model)
    ]
    return 0.5 * mu * sum((((p - a) ** 2).sum() for p, a in shared), torch.zeros(()))


def refresh_user(
    model: SeedModel,
    shard: UserShard,
    config: LocalTrainConfig,
    epochs: int,
    rng: np.random.Generator,
) -> None:
    """Re-fit only the private user embedding against the current shared model.

    A device's user row was last trained in the round it last took part in, against the item
    side of that round; before ranking with a newer global model it takes ``epochs`` private
    epochs on its own train items (the shared parameters do not change). It helps while the
    global model still moves and not at the end of a cosine schedule (docs/results.md), so
    it is off by default.
    """
    if epochs > 0:
        local_train(model, shard, replace(config, epochs=0, private_epochs=epochs), rng)


@torch.no_grad()
def local_evaluate(
    model: SeedModel, shard: UserShard, k: int = 10, targets: np.ndarray | None = None
) -> dict[str, float]:
    """Rank this user's validation and test items (LOO-99 and full ranking) on the device.

    Returns hit/NDCG numbers only: ``val-hr@10``, ``hr@10`` (test), ``full_hr@10``, ...;
    with a cold target (a run holding out cold items) also ``cold-hr@10``, ``cold-full_hr@10``
    ...;
    with ``targets`` (item indices: the run's target items) also their exposure ``er@5``
    and ``er@10`` among the items this user has not interacted with, unless it has seen
    them all.
    """
    if not shard.evaluable:
        return {}
    model.eval()
    scores = model.score_all(ME)[0].numpy()[None, :]  # (1, I)
    out: dict[str, float] = {}
    for prefix, target, other in (
        ("val-", shard.val_item, shard.test_item),
        ("", shard.test_item, shard.val_item),
    ):
        known = known_positive_mask([shard.train_items], [other], shard.num_items)
        known[:, shard.never_negative()] = True  # cold items are not in the warm ranking
        sampled, full = held_out_ranks(scores, np.array([target]), shard.candidates[None], known)
        out.update({prefix + key: v for key, v in summarize(sampled, k).items()})
        out.update({prefix + key: v for key, v in summarize(full, k, prefix="full_").items()})
    if targets is not None and len(targets):
        seen = known_positive_mask([shard.train_items], [shard.val_item], shard.num_items)[0]
        seen[shard.test_item] = True
        exposed = exposure(scores[0], targets, seen, (5, 10))
        if exposed is not None:
            out.update({keys.ER5: exposed[5], keys.ER10: exposed[10]})
    if shard.cold is not None and shard.cold.ranked:
        out.update(_cold_metrics(model, shard.cold, k))
    return out


def _cold_metrics(model: SeedModel, cold: ColdShard, k: int) -> dict[str, float]:
    """The cold target ranked among the cold items, scored from their features alone."""
    scores = model.score_from_features(ME, torch.from_numpy(cold.items)).numpy()  # (1, C)
    sampled, full = cold_ranks(
        scores, cold.items, np.array([cold.target]), cold.candidates[None], [cold.seen]
    )
    return {
        **summarize(sampled, k, prefix=keys.COLD_PREFIX),
        **summarize(full, k, prefix=keys.COLD_PREFIX + "full_"),
    }
