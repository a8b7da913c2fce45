"""Interaction inference by the server: which items did this device interact with?

Threat model (Yuan et al., WWW 2023, interaction-level membership inference against federated
recommenders): an honest-but-curious server holds the global model it sent and what came
back, and ranks the catalog's items by how their rows moved; the items a device trained on
move consistently every epoch, the negatives it sampled move once or not at all.

What "came back" depends on the run's protections, so the attack is run on *views*:

* ``upload``: one device's update Δ — what the server receives without SecAgg+ (with
  user-level DP the device clips Δ to C first, and the server still sees it);
* ``cohort-sum``: Σ of a cohort's Δ — all a server learns under SecAgg+: each member's items
  against every item it does not hold, scored from the one sum (so it measures what the sum
  shows of the cohort's items, which includes the member's; it does not ask *whose* they are,
  which the sum cannot tell by symmetry);
* ``released``: the noised sum DP-FedAvg releases, Σ clip(Δ) + N(0, (zC)²) per coordinate (same
  members and non-members as ``cohort-sum``).

The uploads are *observed*, not simulated by formula: :func:`observe_uploads` runs one more
round of the run from its checkpoint through the real ServerApp round loop and ClientApp (its
mods, trainer and DP-SGD when on) in one process, plain, with a grid that keeps every train
reply the server received. Devices start that round without a stored private row (the
in-process nodes are new), as in a device's first round.

Score of item i: the norm of its rows in every item-indexed shared array of the view (the
item's ID embedding row, say). A model without item ids (``item-ids = "none"``) has no such
array, but its item tower still moved along the features of the items trained on: W_v's
update is Σ_j a_j·f_jᵀ over the device's positives and negatives j, with a_j ≈
±c_j·(w_r ⊙ u), one direction for the whole device (its user vector u ≥ 0, through the
known head w_r), + for a positive and − for a negative. So ΔW_v ≈ (w_r ⊙ u)·φᵀ with φ =
Σ_j ±c_j·f_j, and the server reads φ as the top right singular vector of ΔW_v's feature
columns, its sign fixed by the left one's agreement with w_r, and scores item i by
⟨φ, f_i⟩ / ‖f_i‖ (the catalog's features f_i are public; the global model is the server's).
Each target's scores are turned into ranks among its own candidates before they are pooled,
so one device with large updates does not dominate.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Message
from flwr.common.secure_aggregation.secaggplus_constants import Stage

from fedrec.common import keys
from fedrec.common.data.catalog import load_catalog
from fedrec.common.data.cold import split_with_cold_items
from fedrec.common.data.shard import user_shard
from fedrec.common.data.sources import load_interactions
from fedrec.common.fedconfig import FederationConfig
from fedrec.common.privacy import clip_delta
from fedrec.common.records import arrays_of, config_of, numpy_arrays
from fedrec.common.secagg import wire
from fedrec.common.secagg.primitives import decode_vector, wire_dtype
from fedrec.server.checkpoint import read_checkpoint
from fedrec.server.runs import CATALOG_FILE, CHECKPOINT
from fedrec.simulations.audit.stats import AttackResult, average_ranks, summarize_attack
from fedrec.simulations.inprocess import InProcessGrid, run_inprocess

__all__ = [
    "VIEWS",
    "InteractionAttack",
    "Observation",
    "attack_sums",
    "attack_uploads",
    "item_scores",
    "observe_uploads",
]

VIEWS = ("upload", "masked-upload", "cohort-sum", "released")
ITEM_TOWER = "item_tower.weight"  # W_v: (d, item-id width + F) over g = [id row ; features]
HEAD = "head.weight"  # w_r
Delta = dict[str, np.ndarray]


class RecordingGrid(InProcessGrid):
    """The in-process grid, keeping each train fan-out's messages and the replies received."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.exchanges: list[tuple[list[Message], list[Message]]] = []

    def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> list[Message]:
        messages = list(messages)
        replies = super().send_and_receive(messages, timeout=timeout)
        if messages and messages[0].metadata.message_type == "train":
            self.exchanges.append((messages, replies))
        return replies


@dataclass(frozen=True)
class Observation:
    """One observed round: what each device sent the server, and its training items.

    ``deltas`` holds each device's update Δ (a plain round) or, from a SecAgg+ round, its
    masked vector cut back into the shared arrays' shapes (field elements, centred on 0):
    what the server receives from that device in either case."""

    deltas: dict[int, Delta]  # user index -> one array per shared array
    items: dict[int, np.ndarray]  # user index -> the items it trained on
    num_items: int
    round: int
    secure: bool = False
    features: dict[int, np.ndarray] | None = None  # user index -> its encoded feature row
    item_features: np.ndarray | None = None  # the catalog's (items × F): public
    model: Delta | None = None  # the global model the round started from (the server's)


def observe_uploads(
    run_config: FederationConfig,
    run_dir: Path,
    targets: int,
    seed: int,
    *,
    secure: bool = False,
) -> Observation:
    """Run round (checkpoint + 1) of ``run_config`` for ``targets`` devices and return what
    each sent: plain (user-level DP's clip and noise left to the views), or through SecAgg+
    with the run's settings. ``run_config`` is the run's config (its ``data`` readable
    here)."""
    checkpoint = run_dir / CHECKPOINT
    if not checkpoint.exists():
        raise FileNotFoundError(
            f"{checkpoint} not found: the interaction attack replays a round from the run's"
            " checkpoint (every fedrec simulate and fedrec server run writes one)"
        )
    start = read_checkpoint(checkpoint).round
    catalog = run_dir / CATALOG_FILE
    with tempfile.TemporaryDirectory(prefix="fedrec-audit-") as scratch:
        observed = run_config.replace(
            resume=str(checkpoint),
            num_rounds=start + 1,
            clients_per_round=targets,
            min_clients=1,
            eval_every=10**9,
            eval_clients=1,
            secure_aggregation="secagg+" if secure else "off",
            client_weighting="uniform" if secure else run_config.server.client_weighting,
            dp_clip_norm=0.0,  # the views apply the run's clip and noise themselves
            dp_noise_multiplier=0.0,
            dp_target_epsilon=0.0,
            catalog=str(catalog) if catalog.exists() else run_config.data.catalog,
            out_dir=str(Path(scratch) / "observed"),
            state_dir="",
            shard_dir="",
        )
        grids: list[RecordingGrid] = []

        def factory(app: Any, nodes: int) -> InProcessGrid:
            grids.append(RecordingGrid(app, nodes))
            return grids[-1]

        run_inprocess(observed, seed, grid_factory=factory)
    sent = _sent_models(grids[0])
    data = load_interactions(
        run_config.data.data, threshold=run_config.data.threshold, synthetic=run_config.synthetic()
    )
    split = split_with_cold_items(
        data, seed=run_config.data.seed, fraction=run_config.simulation.cold_items
    )
    uploads = _masked(grids[0], sent) if secure else _plain(grids[0], sent)
    items = {u: user_shard(data, split, u).train_items for u in uploads}
    features = {u: data.user_features[u] for u in uploads}
    item_features = (
        load_catalog(observed.data.catalog).item_features if observed.data.catalog else None
    )
    return Observation(
        uploads, items, data.num_items, start + 1, secure, features, item_features, sent
    )


def _sent_models(grid: RecordingGrid) -> dict[str, np.ndarray]:
    """The global model the last train fan-out carried (every device gets the same)."""
    for messages, _ in reversed(grid.exchanges):
        for message in messages:
            if keys.ARRAYS in message.content.array_records:
                return numpy_arrays(arrays_of(message.content))
    raise RuntimeError("the observed round sent no model")


def _plain(grid: RecordingGrid, start: dict[str, np.ndarray]) -> dict[int, Delta]:
    _, replies = grid.exchanges[-1]
    out = {}
    for reply in replies:
        if not reply.has_error():  # the in-process grid: node i + 1 is user i
            local = numpy_arrays(arrays_of(reply.content))
            out[reply.metadata.src_node_id - 1] = clip_delta(start, local, None)[0]
    return out


def _masked(grid: RecordingGrid, start: dict[str, np.ndarray]) -> dict[int, Delta]:
    """Each device's collect-stage reply: its masked vector, cut into the model's shapes."""
    for messages, replies in grid.exchanges:
        records = messages[0].content.config_records
        if wire.SECAGG not in records or records[wire.SECAGG].get(wire.STAGE) != (
            Stage.COLLECT_MASKED_VECTORS
        ):
            continue
        modulus = wire.round_config(config_of(messages[0].content, wire.SECAGG)).modulus
        sizes = [v.size for v in start.values()]
        out = {}
        for reply in replies:
            if reply.has_error():
                continue
            masked = wire.read_masked(config_of(reply.content, wire.SECAGG))
            length = len(masked) // wire_dtype(modulus).itemsize  # the model, then metrics
            field = decode_vector(masked, length, modulus).astype(np.float64)
            field = np.where(field >= modulus / 2, field - modulus, field)  # centred on 0
            cuts = np.cumsum(sizes)[:-1]
            parts = np.split(field[: sum(sizes)], cuts)
            out[reply.metadata.src_node_id - 1] = {
                k: p.reshape(v.shape) for (k, v), p in zip(start.items(), parts, strict=True)
            }
        return out
    raise RuntimeError("the observed secure round has no collect stage")


def item_scores(
    delta: Mapping[str, np.ndarray],
    num_items: int,
    item_features: np.ndarray | None = None,
    model: Mapping[str, np.ndarray] | None = None,
) -> np.ndarray:
    """Per item, the norm of its rows over every item-indexed array of ``delta``; without
    one (no item-id table), ⟨φ, f_i⟩ / ‖f_i‖ from the item tower's update over the
    catalog's ``item_features``, φ signed by the ``model``'s head (the module docstring)."""
    total = np.zeros(num_items)
    indexed = [v for v in delta.values() if v.ndim >= 1 and v.shape[0] == num_items]
    if not indexed:
        return _feature_scores(delta, num_items, item_features, model)
    for value in indexed:
        total += np.square(value.reshape(num_items, -1)).sum(axis=1)
    return np.sqrt(total)


def _feature_scores(
    delta: Mapping[str, np.ndarray],
    num_items: int,
    item_features: np.ndarray | None,
    model: Mapping[str, np.ndarray] | None,
) -> np.ndarray:
    tower = delta.get(ITEM_TOWER)
    if item_features is None or model is None or tower is None:
        raise ValueError(
            f"no array of the update is indexed by the {num_items} items, and no item tower"
            " over the catalog's features (with the global model) to score them by"
        )
    features = np.asarray(item_features, np.float64)
    left, _, right = np.linalg.svd(np.asarray(tower, np.float64)[:, -features.shape[1] :])
    head = np.asarray(model[HEAD], np.float64).reshape(-1)
    phi = right[0] if left[:, 0] @ head >= 0 else -right[0]  # a_j ∝ w_r ⊙ u, u ≥ 0
    lengths = np.linalg.norm(features, axis=1)
    return (features @ phi) / np.where(lengths > 0, lengths, 1.0)


@dataclass(frozen=True)
class InteractionAttack:
    """One view's result: pooled member/non-member ranks and their metrics."""

    view: str
    targets: int
    cohort: int
    result: AttackResult

    def to_dict(self) -> dict[str, Any]:
        return {
            "view": self.view,
            "targets": self.targets,
            "cohort": self.cohort,
            **self.result.to_dict(),
        }


def _pooled(
    scored: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
) -> tuple[np.ndarray, np.ndarray]:
    """(member ranks, non-member ranks) over targets: each (scores, members, non-members)."""
    members, others = [], []
    for scores, inside, outside in scored:
        if len(inside) == 0 or len(outside) == 0:
            continue
        candidates = np.concatenate([inside, outside])
        # ranks in [0, 1] among the target's own candidates (ties share their mean rank)
        ranks = (average_ranks(scores[candidates]) - 1) / max(len(candidates) - 1, 1)
        members.append(ranks[: len(inside)])
        others.append(ranks[len(inside) :])
    if not members:
        raise ValueError("no target had both member and non-member items to score")
    return np.concatenate(members), np.concatenate(others)


def attack_uploads(
    observation: Observation, *, clip_norm: float = 0.0, seed: int = 0, reps: int = 1000
) -> InteractionAttack:
    """``upload`` (or ``masked-upload`` from a SecAgg+ round): each device's own message,
    its training items against every other item. ``clip_norm``: the run's user-level C."""
    n = observation.num_items
    scored = []
    for u, delta in sorted(observation.deltas.items()):
        if clip_norm > 0 and not observation.secure:
            delta = _clipped(delta, clip_norm)
        inside = np.unique(observation.items[u])
        scores = item_scores(delta, n, observation.item_features, observation.model)
        scored.append((scores, inside, np.setdiff1d(np.arange(n), inside)))
    view = "masked-upload" if observation.secure else "upload"
    return _attack(view, len(scored), 1, scored, seed, reps)


def attack_sums(
    observation: Observation,
    *,
    cohort: int,
    clip_norm: float = 0.0,
    noise_multiplier: float = 0.0,
    seed: int = 0,
    reps: int = 1000,
) -> list[InteractionAttack]:
    """``cohort-sum`` (what SecAgg+ reveals) and, with ``noise_multiplier`` > 0, ``released``
    (the noised sum DP-FedAvg releases): for each cohort of ``cohort`` devices, each member's
    training items against every item it does not hold, scored from the one sum."""
    if observation.secure:
        raise ValueError("the sums are formed from plain uploads: observe with secure=False")
    rng = np.random.default_rng(seed)
    users = sorted(observation.deltas)
    n = observation.num_items
    size = min(cohort, len(users))
    if size < 2:
        raise ValueError(f"a cohort needs at least 2 devices, got {size}")
    deltas = {u: _clipped(observation.deltas[u], clip_norm) for u in users}
    groups = [users[i : i + size] for i in range(0, len(users) - size + 1, size)]
    out = []
    for view in ("cohort-sum", "released"):
        if view == "released" and noise_multiplier <= 0:
            continue
        scored = []
        for group in groups:
            total = {k: np.sum([deltas[u][k] for u in group], axis=0) for k in deltas[group[0]]}
            if view == "released":
                std = noise_multiplier * clip_norm
                total = {k: v + rng.normal(0.0, std, v.shape) for k, v in total.items()}
            scores = item_scores(total, n, observation.item_features, observation.model)
            for u in group:
                inside = np.unique(observation.items[u])
                scored.append((scores, inside, np.setdiff1d(np.arange(n), inside)))
        out.append(_attack(view, len(groups) * size, size, scored, seed, reps))
    return out


def _clipped(delta: Delta, clip_norm: float) -> Delta:
    if clip_norm <= 0:
        return delta
    return clip_delta({k: np.zeros_like(v) for k, v in delta.items()}, delta, clip_norm)[0]


def _attack(
    view: str,
    targets: int,
    cohort: int,
    scored: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    seed: int,
    reps: int,
) -> InteractionAttack:
    members, others = _pooled(scored)
    result = summarize_attack(members, others, reps=reps, seed=seed)
    return InteractionAttack(view, targets, cohort, result)
