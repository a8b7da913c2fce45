"""Item promotion by malicious devices, in a simulation.

``poison-fraction = p`` adds ``round(p × users)`` malicious devices (at least one) to the
population, as fake accounts would join a real federation; they are sampled into cohorts
like everyone else. Each promotes the run's ``target-items`` with a published attack; the
users' embeddings never leave their devices, so every attack works with stand-ins for them:

* **A-ra** (``a-ra``, Rong et al., "Poisoning Deep Learning based Recommender Model in
  Federated Learning Scenarios", IJCAI 2022): pseudo-users with random ID embeddings, drawn
  as the model draws its own (N(0, 0.1²)), and random attributes of the catalog's public
  user schema (a random category of each categorical attribute, a uniform value of each
  numeric one);
* **A-hum** (``a-hum``, the same paper): those pseudo-users first *mined* to be hard — a few
  gradient steps on their embeddings that lower the targets' scores — so the promotion
  reaches users who would not have been reached anyway;
* **FedRecAttack** (``fedrecattack``, Rong et al., ICDE 2022, github.com/rdz98/FedRecAttack):
  the attacker knows a small public part of the interactions (``poison-knowledge``, default
  1 % of the train interactions, drawn seeded) and fits one approximated user per user it
  knows anything of, against each round's model (warm-started from its previous round, as a
  device keeps its row); it then pushes each target above that user's 10th best item, with
  FedRecAttack's loss (gap if positive, e^gap − 1 if not).

Given the round's model, the attacker takes Adam steps on the target items' ID-embedding
rows only, lowering its loss over every (stand-in user, target) pair (A-ra and A-hum:
−log σ(score)), and uploads the model with those rows moved: the step's direction scaled to
an L2 norm of ``poison-norm`` (default: 0.9 × the server's ``max-update-norm``, which the
attacker is assumed to know: the largest update the server's validation lets through).
Nothing else in its reply differs from an honest one's shape, names, dtype or metrics, so
validation accepts it; the defences of ``server/robust.py`` (``norm-bound``,
``row-norm-bound``) are what limit it. Malicious devices evaluate nobody (``users = 0``), so
HR@10 and exposure are the real users'.

The honest devices measure the attack: with ``target-items`` set, every evaluation reports
the targets' exposure ER@5 / ER@10 (common/metrics.py: exposure). ``target-items =
"tail:N"`` draws N items, seeded, from the less popular half of the catalog (by train
interactions), the items an attacker would pay to promote.

Simulation only: the engine's or the in-process grid's nodes ``users + 1 …`` are the
malicious ones (partition ids ≥ users), which the config of a deployment refuses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedrec.common import keys
from fedrec.common.data.catalog import Catalog, load_catalog
from fedrec.common.data.dataset import Interactions
from fedrec.common.data.features import UserFeatureSchema
from fedrec.common.data.sources import load_interactions
from fedrec.common.data.split import temporal_leave_one_out
from fedrec.common.data.synthetic import SyntheticConfig
from fedrec.common.fedconfig import FederationConfig
from fedrec.common.model import (
    ITEM_TABLE,
    ModelConfig,
    SeedModel,
    initial_shared_state,
    load_shared_state,
)
from fedrec.common.privacy import global_norm
from fedrec.common.records import arrays_of, config_of, integer

__all__ = [
    "PSEUDO_USERS",
    "Knowledge",
    "malicious_count",
    "poisoned_population",
    "promote",
    "public_knowledge",
    "random_features",
    "resolve_targets",
    "tail_items",
]

PSEUDO_USERS = 64  # A-ra / A-hum: the attacker's stand-ins for the user population
NEGATIVES = 4  # FedRecAttack: negatives per known item when fitting its approximated users
STATE_KEY = "fedrec.attacker"  # a malicious node's context.state: its stand-ins' embeddings
STEPS = 20  # Adam steps on the target rows (and, for A-hum, on the pseudo-users first)
LR = 0.05
INIT_STD = 0.1  # as SeedModel draws ID embeddings


def malicious_count(config: FederationConfig, users: int) -> int:
    """How many malicious devices ``poison-fraction`` adds to ``users`` honest ones."""
    if not config.simulation.poison_fraction:
        return 0
    return max(1, round(config.simulation.poison_fraction * users))


def tail_items(data: Interactions, count: int, seed: int) -> tuple[str, ...]:
    """``count`` item ids drawn (seeded) from the less popular half of ``data``'s items."""
    popularity = np.bincount(data.item, minlength=data.num_items)
    half = np.argsort(popularity, kind="stable")[: max(data.num_items // 2, 1)]
    if count > len(half):
        raise ValueError(
            f'target-items = "tail:{count}": the less popular half of the catalog has only'
            f" {len(half)} items"
        )
    chosen = np.random.default_rng([seed, 0x7A11]).choice(half, size=count, replace=False)
    return tuple(data.item_ids[i] for i in sorted(chosen))


def resolve_targets(config: FederationConfig, data: Interactions) -> FederationConfig:
    """``config`` with ``target-items = "tail:N"`` replaced by the drawn ids."""
    count = config.simulation.tail_targets()
    if not count:
        return config
    return config.replace(target_items=",".join(tail_items(data, count, config.data.seed)))


@dataclass(frozen=True)
class Knowledge:
    """What the attacker knows of the real users: for FedRecAttack, each user's publicly
    visible train items (a ``poison-knowledge`` fraction of all train interactions); the
    other attacks know nothing (pseudo-users stand in)."""

    items: tuple[np.ndarray, ...] = ()  # per approximated user, the items it is known to like

    @property
    def users(self) -> int:
        return len(self.items)


def public_knowledge(config: FederationConfig) -> Knowledge:
    """The train interactions an attacker sees: each kept with probability
    ``poison-knowledge`` (seeded); one approximated user per user with any kept."""
    return _public_knowledge(
        config.data.data,
        config.data.threshold,
        config.data.seed,
        config.synthetic(),
        config.simulation.poison_knowledge,
    )


@lru_cache(maxsize=2)
def _public_knowledge(
    data: str, threshold: float, seed: int, synthetic: SyntheticConfig, fraction: float
) -> Knowledge:
    interactions = load_interactions(data, threshold=threshold, synthetic=synthetic)
    split = temporal_leave_one_out(interactions, seed=seed)
    rng = np.random.default_rng([seed, 0xFEDA])
    known = []
    for user in range(split.num_users):
        items = np.asarray(split.train_items_of(user), dtype=np.int64)
        kept = items[rng.random(len(items)) < fraction]
        if len(kept):
            known.append(kept)
    return Knowledge(tuple(known))


def promote(
    shared: dict[str, torch.Tensor],
    catalog: Catalog,
    dim: int,
    targets: np.ndarray,
    *,
    attack: str,
    norm: float,
    rng: np.random.Generator,
    knowledge: Knowledge = Knowledge(),
    remembered: torch.Tensor | None = None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """(the shared group a malicious device uploads, the user embeddings it used).

    ``shared`` with the ``targets``' rows of the item table moved, by ``norm`` in all, to
    raise their scores for the attacker's stand-ins of the users (see the module docstring).
    ``remembered``: the stand-ins' embeddings of the device's previous round (FedRecAttack
    fits them further each round, as devices fit their own rows).
    """
    users = knowledge.users if attack == "fedrecattack" else PSEUDO_USERS
    seed = int(rng.integers(2**31))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SeedModel(
            ModelConfig(
                num_users=users,
                num_items=catalog.num_items,
                user_feature_dim=catalog.user_feature_dim,
                item_feature_dim=catalog.item_feature_dim,
                id_dim=dim,
                dim=dim,
                init_std=INIT_STD,
            ),
            torch.from_numpy(random_features(catalog.user_schema, users, rng)),
            torch.from_numpy(catalog.item_features),
        )
    load_shared_state(model, shared)
    for p in model.parameters():
        p.requires_grad_(False)
    embedding = model.user_embedding.weight
    if remembered is not None and remembered.shape == embedding.shape:
        embedding.copy_(remembered)
    targets = np.asarray(targets, np.int64)
    if attack == "fedrecattack":
        _fit_users(model, knowledge, rng)
        pairs, competitors = _hard_pairs(model, knowledge, targets)
        users_t, items_t = pairs

        def loss() -> torch.Tensor:  # FedRecAttack's: the target above the user's 10th item
            gap = model(users_t, competitors) - model(users_t, items_t)
            return torch.where(gap < 0, torch.exp(gap) - 1, gap).sum()
    else:
        users_t = torch.arange(users).repeat_interleave(len(targets))
        items_t = torch.from_numpy(targets).repeat(users)
        if attack == "a-hum":  # hard users: those who like the targets least
            embedding.requires_grad_(True)
            _descend(embedding, lambda: torch.sigmoid(model(users_t, items_t)).mean())
            embedding.requires_grad_(False)

        def loss() -> torch.Tensor:
            return -torch.nn.functional.logsigmoid(model(users_t, items_t)).mean()

    rows = torch.from_numpy(targets)
    if model.item_embedding is None:  # FederationConfig refuses poison-fraction without it
        raise ValueError("the promotion attacks push item-table rows: this model has none")
    table = model.item_embedding.weight
    start = table.detach()[rows].clone()
    table.requires_grad_(True)
    _descend(table, loss)
    moved = table.detach()[rows] - start
    out = {k: v.clone() for k, v in shared.items()}
    length = float(moved.norm())
    if length > 0:
        out[ITEM_TABLE][rows] += moved * (norm / length)
    return out, embedding.detach().clone()


def _fit_users(model: SeedModel, knowledge: Knowledge, rng: np.random.Generator) -> None:
    """Fit the approximated users' rows to their known items against the current model (BCE
    with sampled negatives, as a device fits its own row)."""
    users = np.concatenate([np.full(len(items), u) for u, items in enumerate(knowledge.items)])
    positives = np.concatenate(knowledge.items)
    negatives = rng.integers(model.config.num_items, size=(len(positives), NEGATIVES))
    user_t = torch.from_numpy(np.repeat(users, 1 + NEGATIVES))
    item_t = torch.from_numpy(np.concatenate([positives[:, None], negatives], axis=1).ravel())
    label = torch.zeros(len(positives), 1 + NEGATIVES)
    label[:, 0] = 1.0
    label = label.ravel()
    embedding = model.user_embedding.weight.requires_grad_(True)
    _descend(
        embedding,
        lambda: torch.nn.functional.binary_cross_entropy_with_logits(model(user_t, item_t), label),
    )
    embedding.requires_grad_(False)


@torch.no_grad()
def _hard_pairs(
    model: SeedModel, knowledge: Knowledge, targets: np.ndarray
) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
    """((users, targets) of every approximated user and target it is not known to like,
    each pair's competitor: that user's 10th best item among the rest)."""
    scores = model.score_all(torch.arange(knowledge.users))
    users, items, competitors = [], [], []
    for user, known in enumerate(knowledge.items):
        row = scores[user].clone()
        row[torch.from_numpy(known)] = -torch.inf
        row[torch.from_numpy(targets)] = -torch.inf
        tenth = int(torch.topk(row, 10).indices[-1])
        for target in targets[~np.isin(targets, known)]:
            users.append(user)
            items.append(int(target))
            competitors.append(tenth)
    return (torch.tensor(users), torch.tensor(items)), torch.tensor(competitors)


def random_features(schema: UserFeatureSchema, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` feature rows of random attributes: one category of each categorical column,
    a uniform [0, 1) value of each numeric one."""
    blocks = []
    for column in schema.columns:
        if column.encoding in ("one-hot", "zip-region"):
            block = np.zeros((count, column.width), np.float32)
            block[np.arange(count), rng.integers(column.width, size=count)] = 1.0
        else:
            block = rng.random((count, column.width), dtype=np.float32)
        blocks.append(block)
    return np.concatenate(blocks, axis=1) if blocks else np.zeros((count, 0), np.float32)


def _descend(parameter: torch.Tensor, loss_fn: Callable[[], torch.Tensor]) -> None:
    optimizer = torch.optim.Adam([parameter], lr=LR)
    for _ in range(STEPS):
        optimizer.zero_grad()
        loss_fn().backward()
        optimizer.step()


def poisoned_population(
    honest: ClientApp, config: FederationConfig, users: int
) -> tuple[ClientApp, int]:
    """(the population's ClientApp, its node count): ``honest`` alone without
    ``poison-fraction``; else one that runs the attack on partitions ``users …``."""
    count = malicious_count(config, users)
    if not count:
        return honest, users
    router = _Router(honest, config, users)
    app = ClientApp()
    app.train()(router.train)
    app.evaluate()(router.evaluate)
    return app, users + count


class _Router:
    """Honest partitions go to the honest ClientApp (which sees a population of ``users``,
    as without attackers); the rest attack. Module-level with bound methods: the engine
    pickles the ClientApp with every message."""

    def __init__(self, honest: ClientApp, config: FederationConfig, users: int) -> None:
        self.honest, self.config, self.users = honest, config, users

    def train(self, msg: Message, context: Context) -> Message:
        partition = int(context.node_config["partition-id"])
        if partition < self.users:
            return self.honest(msg, self._honest(context))
        config = self.config
        torch.set_num_threads(config.local.threads)
        catalog = load_catalog(config.data.catalog)
        shared = arrays_of(msg.content).to_torch_state_dict()
        server_round = integer(config_of(msg.content), keys.SERVER_ROUND, 0)
        fitted = config.simulation.poison_attack == "fedrecattack"  # A-ra, A-hum: fresh stand-ins
        remembered = None
        if STATE_KEY in context.state and fitted:  # its stand-ins, as it left them
            remembered = torch.from_numpy(
                arrays_of(context.state, STATE_KEY)["users"].numpy().copy()
            )
        uploaded, users = promote(
            shared,
            catalog,
            config.model.dim,
            catalog.indices_of(config.simulation.target_item_ids()),
            attack=config.simulation.poison_attack,
            norm=config.simulation.poison_norm or 0.9 * _server_bound(config),
            rng=np.random.default_rng([config.data.seed, partition, server_round]),
            knowledge=public_knowledge(config) if fitted else Knowledge(),
            remembered=remembered,
        )
        context.state[STATE_KEY] = ArrayRecord({"users": Array(users.numpy())})
        metrics: dict[str, int | float | list[int] | list[float]] = {
            keys.UNIT_WEIGHT: 1,
            keys.TRAIN_LOSS: 0.5,  # a plausible loss: the server cannot check it
            keys.RETURNING: int(server_round > 1),
        }
        if config.server.client_weighting == "examples":
            metrics[keys.NUM_EXAMPLES] = 100 * (1 + config.local.negatives)  # a plausible history
        if config.record_dp.enabled:  # an honest device's ledger keys (it keeps no ledger)
            metrics.update({keys.RECORD_EPSILON: 0.0, keys.BUDGET_EXHAUSTED: 0})
        arrays = ArrayRecord({k: Array(v.numpy()) for k, v in uploaded.items()})
        content = RecordDict({keys.ARRAYS: arrays, keys.METRICS: MetricRecord(metrics)})
        return Message(content=content, reply_to=msg)

    def evaluate(self, msg: Message, context: Context) -> Message:
        if int(context.node_config["partition-id"]) < self.users:
            return self.honest(msg, self._honest(context))
        metrics = MetricRecord({keys.USERS: 0, keys.NUM_EXAMPLES: 0, keys.UNIT_WEIGHT: 1})
        return Message(content=RecordDict({keys.METRICS: metrics}), reply_to=msg)

    def _honest(self, context: Context) -> Context:
        node_config = {**context.node_config, "num-partitions": self.users}
        return Context(
            run_id=context.run_id,
            node_id=context.node_id,
            node_config=node_config,
            state=context.state,
            run_config=context.run_config,
        )


def _server_bound(config: FederationConfig) -> float:
    """The server's ``max-update-norm`` as it computes it (server/app.py: _validator)."""
    if config.server.max_update_norm:
        return config.server.max_update_norm
    return _start_norm(config.data.catalog, config.model.dim, config.data.seed)


@lru_cache(maxsize=4)
def _start_norm(catalog: str, dim: int, seed: int) -> float:
    state = initial_shared_state(load_catalog(catalog), dim, seed)
    return global_norm({k: v.numpy() for k, v in state.items()})
