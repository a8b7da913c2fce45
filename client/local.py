"""What a device does with its own data: train and evaluate, with no server needed (it ranks
the catalog with the model's NumPy inference bundle, fedrec.common.bundle, not here).

The local model is the seed model with a single user row (this device's user), in NumPy
(client/local_model.py): a device imports no torch unless it trains under DP-SGD. Its shared
parameters come from the server each round; its private row comes from the device's own
state store and never leaves it. Forward, backward and the optimizers are written out here,
step for step as torch computes them (tests/client/test_local.py checks every option against
the torch SeedModel with autograd and torch.optim after every step).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace

import numpy as np

from fedrec.client.local_model import USER_ROW, LocalModel, build_local_model
from fedrec.common import keys
from fedrec.common.data.cold import ColdShard, cold_ranks
from fedrec.common.data.shard import UserShard
from fedrec.common.fedconfig import LOCAL_OPTIMIZERS
from fedrec.common.metrics import exposure, held_out_ranks, known_positive_mask, summarize
from fedrec.common.shapes import ITEM_TABLE

__all__ = [
    "FACTOR",
    "FactoredTable",
    "LocalModel",
    "LocalTrainConfig",
    "build_local_model",
    "local_evaluate",
    "local_train",
    "refresh_user",
]

FACTOR = "item_embedding.factor"  # a low-rank round's table parameter, in the table's place
BETAS = (0.9, 0.999)  # torch.optim.Adam(W)'s defaults
EPS = 1e-8


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


@dataclass
class FactoredTable:
    """An item table E = E_start + A·B that trains only A (rows × r, from zero) against the
    fixed basis B (r × id_dim, orthonormal rows: common/colr.py)."""

    start: np.ndarray  # (rows, id_dim) the table at the round's start
    basis: np.ndarray  # (r, id_dim)
    factor: np.ndarray  # (rows, r) A, the only trained part

    @classmethod
    def of(cls, start: np.ndarray, basis: np.ndarray) -> FactoredTable:
        if basis.ndim != 2 or basis.shape[1] != start.shape[1]:
            raise ValueError(
                f"item basis of shape {basis.shape} for a table {tuple(start.shape)} wide"
            )
        factor = np.zeros((start.shape[0], basis.shape[0]), np.float32)
        return cls(np.array(start, np.float32), np.asarray(basis, np.float32), factor)

    @property
    def weight(self) -> np.ndarray:
        return self.start + self.factor @ self.basis


@dataclass
class _Compact:
    """The model over the round's rows only: trainable ``params`` (SeedModel's order; a
    low-rank round holds :data:`FACTOR` where the table was) and the rows' features."""

    model: LocalModel  # its item table/features cover the round's rows only
    factored: FactoredTable | None

    @property
    def params(self) -> dict[str, np.ndarray]:
        return self.model.params

    def table(self) -> np.ndarray | None:
        """(rows, id_dim) the current item-id rows, or None without an item-id table."""
        return self.factored.weight if self.factored is not None else self.model.item_table


def local_train(
    model: LocalModel,
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
    user's items and the sampled negatives), dense over them as torch's nn.Embedding
    gradients are (Adam moves a row whose gradient is 0 in a batch by its momentum); rows
    outside it get no gradient and would not move under Adam anyway, so the result is the
    same while the device's memory and time no longer grow with the catalog. The trained
    rows are written back into ``model``.

    With ``item_basis`` B (r × id_dim, orthonormal rows: a low-rank round, common/colr.py)
    the item table trains as E_start + A·B, A (rows × r) the only table parameter, from
    zero: the table's update is a rank-r factor against B (CoLR).
    """
    if len(shard.train_items) == 0:
        return 0.0, 0
    private_plan = [_epoch_examples(shard, config, rng) for _ in range(config.private_epochs)]
    joint_plan = [_epoch_examples(shard, config, rng) for _ in range(config.epochs)]
    rows = np.unique(np.concatenate([items for items, _ in private_plan + joint_plan]))
    compact = _compact_copy(model, rows, item_basis)
    local = lambda plan: [(np.searchsorted(rows, i), y) for i, y in plan]  # noqa: E731
    if private_plan:
        _private_epochs(compact, _private_optimizer(config), local(private_plan), config)
    anchor = {n: p.copy() for n, p in compact.params.items()} if config.proximal_mu > 0 else None
    result = _epochs(compact, local(joint_plan), config, anchor)
    _write_back(model, compact, rows)
    return result


def _epoch_examples(
    shard: UserShard, config: LocalTrainConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One shuffled epoch: (items (N,), labels (N,) float32) with fresh negatives."""
    examples = shard.examples(config.negatives, rng)
    return examples.items, examples.labels


def _compact_copy(model: LocalModel, rows: np.ndarray, basis: np.ndarray | None) -> _Compact:
    """A copy of ``model`` over the catalog rows ``rows`` only."""
    params = {n: (p[rows] if n == ITEM_TABLE else p.copy()) for n, p in model.params.items()}
    config = replace(model.config, num_items=len(rows))
    compact = LocalModel(config, params, model.user_features, model.item_features[rows])
    if basis is None:
        return _Compact(compact, None)
    if ITEM_TABLE not in params:
        raise ValueError("a low-rank round (colr-rank) needs the model's item-id table")
    factored = FactoredTable.of(params[ITEM_TABLE], basis)
    compact.params = {(FACTOR if n == ITEM_TABLE else n): p for n, p in params.items()}
    compact.params[FACTOR] = factored.factor  # the same array: the optimizers move it in place
    return _Compact(compact, factored)


def _write_back(model: LocalModel, compact: _Compact, rows: np.ndarray) -> None:
    table = compact.table()
    if table is not None:
        model.params[ITEM_TABLE][rows] = table
    for name, value in compact.params.items():
        if name not in (ITEM_TABLE, FACTOR):
            model.params[name][...] = value


# --- forward and backward -------------------------------------------------------------------
def _loss_and_grads(
    compact: _Compact, items: np.ndarray, labels: np.ndarray
) -> tuple[np.float32, dict[str, np.ndarray]]:
    """Mean BCE with logits of a batch and its gradient for every trainable parameter.

    With h = [e ; f], z = W_u h + b_u, u = ReLU(z), g_j = [E_j ; F_j], s_j = W_v g_j + b_v,
    v_j = ReLU(s_j), logit_j = w·(u ⊙ v_j) + b and r_j = (σ(logit_j) − y_j) / B:
        ∂b = Σ_j r_j,   ∂w = u ⊙ (Vᵀr),   ∂z = 1(z > 0) ⊙ w ⊙ (Vᵀr),
        ∂W_u = ∂z hᵀ,   ∂b_u = ∂z,   ∂e = (W_u)_{:, :id}ᵀ ∂z,
        ∂s_j = 1(s_j > 0) ⊙ r_j (w ⊙ u),   ∂W_v = Σ_j ∂s_j g_jᵀ,   ∂b_v = Σ_j ∂s_j,
        ∂E_i = Σ_{j: item i} (W_v)_{:, :id}ᵀ ∂s_j  (dense over the compact rows, 0 if unseen),
        a low-rank round: ∂A = ∂E Bᵀ  (E = E_start + A·B).
    """
    p, model = compact.params, compact.model
    id_dim = model.config.id_dim
    h = np.concatenate([p[USER_ROW][0], model.user_features[0]])  # (id + F_u,)
    z = p["user_tower.weight"] @ h + p["user_tower.bias"]  # (dim,)
    u = np.maximum(z, 0)
    table = compact.table()
    features = model.item_features[items]  # (B, F_i)
    g = features if table is None else np.concatenate([table[items], features], axis=1)
    s = g @ p["item_tower.weight"].T + p["item_tower.bias"]  # (B, dim)
    v = np.maximum(s, 0)
    w = p["head.weight"][0]  # (dim,)
    logit = v @ (u * w) + p["head.bias"][0]  # (B,)
    loss = np.mean(np.maximum(logit, 0) - logit * labels + np.log1p(np.exp(-np.abs(logit))))
    r = (_sigmoid(logit) - labels) / np.float32(len(items))  # (B,)
    vr = v.T @ r  # (dim,)
    grad_z = w * vr * (z > 0)
    grad_s = r[:, None] * (w * u)[None, :] * (s > 0)  # (B, dim)
    grads = {
        USER_ROW: (p["user_tower.weight"][:, :id_dim].T @ grad_z)[None, :],
        "user_tower.weight": np.outer(grad_z, h),
        "user_tower.bias": grad_z,
        "item_tower.weight": grad_s.T @ g,
        "item_tower.bias": grad_s.sum(axis=0),
        "head.weight": (u * vr)[None, :],
        "head.bias": r.sum(keepdims=True),
    }
    if table is not None:
        grad_table = np.zeros_like(table)  # (rows, id)
        np.add.at(grad_table, items, grad_s @ p["item_tower.weight"][:, :id_dim])
        if compact.factored is not None:
            grads[FACTOR] = grad_table @ compact.factored.basis.T  # (rows, r)
        else:
            grads[ITEM_TABLE] = grad_table
    return np.float32(loss), grads


def _proximal(
    compact: _Compact, anchor: Mapping[str, np.ndarray], mu: float, grads: dict[str, np.ndarray]
) -> np.float32:
    """FedProx (Li et al., 2020): μ/2 · ‖w − w_t‖² over the shared parameters, its gradient
    μ (w − w_t) added to ``grads``; in a low-rank round the table's own ‖A·B‖², gradient
    μ (A·B) Bᵀ."""
    term = np.float32(0.0)
    for name in compact.model.shared_names():
        if name == FACTOR:
            assert compact.factored is not None
            diff = compact.params[FACTOR] @ compact.factored.basis  # ΔE = A·B
            grads[name] = grads[name] + np.float32(mu) * (diff @ compact.factored.basis.T)
        else:
            diff = compact.params[name] - anchor[name]
            grads[name] = grads[name] + np.float32(mu) * diff
        term += np.sum(diff * diff, dtype=np.float32)
    return np.float32(0.5 * mu) * term


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """σ(x) without overflow for large |x|."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(np.float32)


# --- optimizers, as torch.optim computes them ------------------------------------------------
class _SGD:
    """torch.optim.SGD without momentum: p ← p − lr·∂p."""

    def __init__(self, lr: float) -> None:
        self.lr = np.float32(lr)

    def step(self, params: dict[str, np.ndarray], grads: Mapping[str, np.ndarray]) -> None:
        for name, grad in grads.items():
            params[name] -= self.lr * grad


class _Adam:
    """torch.optim.Adam / AdamW (betas (0.9, 0.999), eps 1e-8) in torch's order of updates:
    p ← p·(1 − lr·wd) (AdamW's decoupled decay, first); m ← β₁m + (1 − β₁)∂p;
    v ← β₂v + (1 − β₂)∂p²; p ← p − (lr / (1 − β₁ᵗ)) · m / (√v / √(1 − β₂ᵗ) + ε)."""

    def __init__(self, lr: float, weight_decay: float = 0.0) -> None:
        self.lr, self.weight_decay = lr, weight_decay
        self.moments: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.t = 0

    def step(self, params: dict[str, np.ndarray], grads: Mapping[str, np.ndarray]) -> None:
        self.t += 1
        beta1, beta2 = BETAS
        step_size = np.float32(self.lr / (1 - beta1**self.t))
        bias2_sqrt = np.float32(np.sqrt(1 - beta2**self.t))
        for name, grad in grads.items():
            p = params[name]
            if self.weight_decay:
                p *= np.float32(1 - self.lr * self.weight_decay)
            m, v = self.moments.get(name) or (np.zeros_like(p), np.zeros_like(p))
            m += np.float32(1 - beta1) * (grad - m)  # torch's lerp: m + (1 − β₁)(∂p − m)
            v *= np.float32(beta2)
            v += np.float32(1 - beta2) * grad * grad
            self.moments[name] = (m, v)
            p -= step_size * m / (np.sqrt(v) / bias2_sqrt + np.float32(EPS))


def _private_optimizer(config: LocalTrainConfig) -> _Adam:
    return _Adam(config.private_lr, config.private_weight_decay)


def _shared_optimizer(config: LocalTrainConfig) -> _SGD | _Adam:
    return _Adam(config.lr) if config.optimizer == "adam" else _SGD(config.lr)


# --- epochs -----------------------------------------------------------------------------------
def _epochs(
    compact: _Compact,
    plan: list[tuple[np.ndarray, np.ndarray]],
    config: LocalTrainConfig,
    anchor: Mapping[str, np.ndarray] | None,
) -> tuple[float, int]:
    """Joint epochs: every parameter steps on every batch (the private row with AdamW, the
    shared group with SGD or Adam)."""
    private, shared = _private_optimizer(config), _shared_optimizer(config)
    shared_names = compact.model.shared_names()
    total, seen = 0.0, 0
    for batch, target in _batches(plan, config.batch_size):
        loss, grads = _loss_and_grads(compact, batch, target)
        if anchor is not None and config.proximal_mu > 0:
            loss += _proximal(compact, anchor, config.proximal_mu, grads)
        private.step(compact.params, {USER_ROW: grads[USER_ROW]})
        shared.step(compact.params, {n: grads[n] for n in shared_names})
        total += float(loss) * len(batch)
        seen += len(batch)
    return total / max(seen, 1), seen


def _batches(
    plan: list[tuple[np.ndarray, np.ndarray]], batch_size: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The (items, labels) mini-batches of a plan of epochs, in order."""
    for items, labels in plan:
        for start in range(0, len(items), batch_size):
            yield items[start : start + batch_size], labels[start : start + batch_size]


def _private_epochs(
    compact: _Compact,
    optimizer: _Adam,
    plan: list[tuple[np.ndarray, np.ndarray]],
    config: LocalTrainConfig,
) -> None:
    """Epochs that move only the user row e: the same batches, loss and optimizer steps as
    :func:`_epochs` with the private optimizer alone, at a fraction of its cost.

    Everything but e is a constant here, so the item vectors v, the head (w, b) and the
    feature part of the user tower are computed once:
        z = W_e e + (W_f f + b_u),  u = ReLU(z),  logit_j = w·(u ⊙ v_j) + b,
        ∂L/∂e = W_eᵀ [1(z > 0) ⊙ w ⊙ Σ_j v_j (σ(logit_j) − y_j) / B].
    """
    p, model = compact.params, compact.model
    id_dim = model.config.id_dim
    table = compact.table()
    features = model.item_features
    g = features if table is None else np.concatenate([table, features], axis=1)
    v = np.maximum(g @ p["item_tower.weight"].T + p["item_tower.bias"], 0)  # (rows, dim)
    w, b = p["head.weight"][0], p["head.bias"][0]
    w_e = p["user_tower.weight"][:, :id_dim]
    c = p["user_tower.weight"][:, id_dim:] @ model.user_features[0] + p["user_tower.bias"]
    e = p[USER_ROW]  # (1, id_dim): the only parameter that moves
    for batch, target in _batches(plan, config.batch_size):
        vb = v[batch]  # (B, dim)
        z = w_e @ e[0] + c
        u = np.maximum(z, 0)
        residual = (_sigmoid(vb @ (u * w) + b) - target) / np.float32(len(vb))
        grad_z = (vb.T @ residual) * w * (z > 0)
        optimizer.step(p, {USER_ROW: (w_e.T @ grad_z)[None, :]})


def refresh_user(
    model: LocalModel,
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


# --- evaluation -------------------------------------------------------------------------------
def local_evaluate(
    model: LocalModel, shard: UserShard, k: int = 10, targets: np.ndarray | None = None
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
    scores = model.score_all()[None, :]  # (1, I)
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


def _cold_metrics(model: LocalModel, cold: ColdShard, k: int) -> dict[str, float]:
    """The cold target ranked among the cold items, scored from their features alone."""
    scores = model.score_from_features(cold.items)[None, :]  # (1, C)
    sampled, full = cold_ranks(
        scores, cold.items, np.array([cold.target]), cold.candidates[None], [cold.seen]
    )
    return {
        **summarize(sampled, k, prefix=keys.COLD_PREFIX),
        **summarize(full, k, prefix=keys.COLD_PREFIX + "full_"),
    }
