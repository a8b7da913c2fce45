"""The federation's settings, parsed once from Flower's run config into a frozen dataclass.

Every tunable lives in ``[tool.flwr.app.config]`` (pyproject.toml) and in the scenario TOML
files under ``simulations/`` with the same kebab-case keys; :meth:`FederationConfig.from_mapping`
is the only place that reads them. Unknown keys are errors, not silently ignored typos.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from fedrec.common.compression import MODES as COMPRESSION_MODES
from fedrec.common.data.sources import SYNTHETIC
from fedrec.common.data.synthetic import SyntheticConfig
from fedrec.common.privacy import ACCOUNTANTS
from fedrec.common.secagg.primitives import MIN_SECURE_CLIENTS, SecAggSettings

__all__ = [
    "AGGREGATIONS",
    "ATTACKS",
    "CLIENT_WEIGHTINGS",
    "DECAY_STRATEGIES",
    "ITEM_ID_MODES",
    "LOCAL_OPTIMIZERS",
    "LR_SCHEDULES",
    "SERVER_LR_STRATEGIES",
    "STRATEGIES",
    "FederationConfig",
]

STRATEGIES = ("fedavg", "fedavgm", "fedadam", "fedyogi", "fedprox")
SERVER_LR_STRATEGIES = ("fedavgm", "fedadam", "fedyogi")  # the ones with a server step size
DECAY_STRATEGIES = ("fedadam", "fedyogi")  # server optimizers with decoupled weight decay
LR_SCHEDULES = ("constant", "cosine")
LOCAL_OPTIMIZERS = ("sgd", "adam")
CLIENT_WEIGHTINGS = ("examples", "uniform")
AGGREGATIONS = ("off", "secagg+")  # secure aggregation of the train updates (common/secagg/grid.py)
ATTACKS = ("a-ra", "a-hum", "fedrecattack")  # item promotion (simulations/poisoning.py)
ITEM_ID_MODES = ("all", "none")  # the item-id table: a row per item, or none (features only)
TAIL_PREFIX = "tail:"  # target-items = "tail:N": N seeded items of the less popular half


@dataclass(frozen=True)
class FederationConfig:
    # data: every simulated node derives its own user's shard from the same source and split seed
    data: str = "synthetic"  # a data-set path or "synthetic" (devices and runner only)
    catalog: str = ""  # the published catalog file (fedrec catalog build); simulate builds one
    threshold: float = 0.0  # ratings >= threshold are interactions
    seed: int = 0  # split, evaluation candidates, client sampling, model init
    synthetic_users: int = 500  # size of the synthetic default (ignored for real data)
    synthetic_items: int = 1000
    cold_items: float = 0.0  # hold this fraction of the items out of training entirely and
    # rank each user's latest one among them (common/data/cold.py; simulations)
    # model
    dim: int = 64  # id-embedding and tower width
    item_ids: str = "all"  # all: an item-id table row per item; none: items are their
    # catalog features alone (a smaller shared model: user-level DP noises fewer coordinates)
    # rounds and sampling
    num_rounds: int = 20
    clients_per_round: int = 50  # exact count per round (0: use fraction-train)
    fraction_train: float = 0.1  # used when clients-per-round is 0
    min_clients: int = 2  # a round starts once this many nodes are connected
    expected_nodes: int = 0  # wait for this many nodes before round 1 (simulation: all users)
    round_timeout: float = 600.0  # seconds a round (and the wait for its nodes) may take
    eval_every: int = 5  # federated evaluation every k rounds (and after the last)
    eval_clients: int = 0  # a fixed panel of this many nodes, asked at every evaluation (0: all)
    max_update_norm: float = 0.0  # refuse a longer update (0: the norm of the start model)
    # robust aggregation (server/robust.py): each accepted update is clipped before averaging
    norm_bound: float = 0.0  # L2 bound of a device's whole update (0: off)
    row_norm_bound: float = 0.0  # L2 bound of each item-table row of a device's update (0: off)
    # item promotion (simulations/poisoning.py): measured by every evaluation, attacked in
    # simulations only
    target_items: str = ""  # item ids, comma-separated, or "tail:N"; evaluation adds ER@5/10
    poison_fraction: float = 0.0  # malicious devices added, as a fraction of the users
    poison_attack: str = "a-ra"  # a-ra | a-hum (Rong et al., IJCAI 2022) | fedrecattack (ICDE 2022)
    poison_knowledge: float = 0.01  # fedrecattack: fraction of train interactions it knows
    poison_norm: float = 0.0  # L2 norm of each malicious update (0: 0.9 x max-update-norm)
    # server optimizer
    strategy: str = "fedavg"  # fedavg | fedavgm | fedadam | fedyogi | fedprox
    server_lr: float = 1.0  # FedAvgM: step on the averaged update; FedAdam/FedYogi: eta
    server_lr_schedule: str = "constant"  # constant | cosine (decays to 0 at num-rounds)
    server_beta1: float = 0.9  # FedAdam/FedYogi momentum
    server_beta2: float = 0.99
    server_tau: float = 1e-3  # FedAdam/FedYogi adaptivity
    server_weight_decay: float = 0.0  # FedAdam/FedYogi: decoupled decay of weight matrices
    proximal_mu: float = 0.0  # FedProx μ (also sent to clients)
    client_weighting: str = "examples"  # weight of a client's update: examples | uniform
    # local training on the device
    client_threads: int = 1  # torch threads per ClientApp call (the engine runs one per core)
    local_epochs: int = 1
    local_optimizer: str = "sgd"  # optimizer of the shared parameters: sgd | adam
    local_lr: float = 1.0  # its learning rate
    local_batch_size: int = 64
    private_epochs: int = 0  # epochs fitting only the user embedding before the joint epochs
    private_lr: float = 0.1  # Adam learning rate of the private user embedding
    private_weight_decay: float = 0.0  # its decoupled weight decay (AdamW)
    negatives: int = 4
    eval_private_epochs: int = 0  # private epochs refreshing the user row before evaluating
    # user-level differential privacy: DP-FedAvg (McMahan et al., 2018), server/dp_fedavg.py
    dp_clip_norm: float = 0.0  # C: clip of each client's shared-parameter update (0: off)
    dp_noise_multiplier: float = 0.0  # z: noise std z*C/m on the average (0: from target)
    dp_target_epsilon: float = 0.0  # stop before ε exceeds it; calibrates z if z is 0
    dp_delta: float = 1e-4
    dp_accountant: str = "rdp"  # rdp | prv
    # record-level differential privacy on the device: Opacus DP-SGD, client/dp_sgd.py
    local_dp_noise_multiplier: float = 0.0  # z of DP-SGD (0: off)
    local_dp_clip_norm: float = 1.0  # per-example gradient clip
    local_dp_delta: float = 1e-4  # δ of each device's own ledger
    local_epsilon_budget: float = 0.0  # a device declines rounds past this ε (0: no limit)
    # secure aggregation: SecAgg+ (Bell et al., 2020) as Message-API rounds, common/secagg/
    secure_aggregation: str = "off"  # off | secagg+
    secagg_neighbours: int = 0  # k peers per client; 0: 2*ceil(log2 n); >= n-1: all pairs
    secagg_threshold: float = 0.5  # fraction of a secret's k+1 shares that rebuild it
    secagg_clip_range: float = 8.0  # c: each update coordinate is clipped to [-c, c]
    secagg_quantization_bits: int = 22  # [-c, c] maps onto 2^b + 1 levels (step 2c/2^b)
    # the wire form of the shared group (common/compression.py): none | fp16 | int8
    download_compression: str = "none"  # the model sent to devices (train and evaluate)
    upload_compression: str = "none"  # the update Δ devices send back (int8: unbiased rounding)
    # CoLR (common/colr.py): devices train and send the item table's update as a rank-r
    # factor against a fresh public basis each round; 0: the dense update
    colr_rank: int = 0
    # data handling on the device (client/secure_store.py, client/encrypted_shards.py)
    shard_dir: str = ""  # read each node's shard from this encrypted folder (fedrec data encrypt)
    shard_pack: str = ""  # simulation: the runner's memory-mapped split (common/data/pack.py)
    key_file: str = ""  # 32-byte key file of shard-dir and state-dir (kept outside both)
    state_dir: str = ""  # keep each node's private state + DP ledger here, encrypted
    # outputs
    out_dir: str = ""  # run folder the server writes records, checkpoints, model into
    resume: str = ""  # checkpoint (.npz) of the shared model to resume from
    audit_log: str = ""  # if set, every client reply is recorded here (JSON lines)

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        positive = (
            "client_threads",
            "dim",
            "num_rounds",
            "eval_every",
            "local_epochs",
            "local_batch_size",
            "min_clients",
            "synthetic_users",
            "synthetic_items",
        )
        for f in fields(self):
            value = getattr(self, f.name)
            if str(f.type) in ("int", "float") and isinstance(value, bool):
                raise ValueError(f"{_kebab(f.name)} must be a number, got {value}")
            if str(f.type) == "float" and not math.isfinite(value):
                raise ValueError(f"{_kebab(f.name)} must be a finite number, got {value}")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{_kebab(name)} must be >= 1, got {getattr(self, name)}")
        for name in (
            "clients_per_round",
            "eval_clients",
            "max_update_norm",
            "norm_bound",
            "row_norm_bound",
            "poison_norm",
            "negatives",
            "proximal_mu",
            "expected_nodes",
            "server_weight_decay",
            "private_weight_decay",
            "eval_private_epochs",
            "dp_clip_norm",
            "dp_noise_multiplier",
            "dp_target_epsilon",
            "local_dp_noise_multiplier",
            "local_epsilon_budget",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{_kebab(name)} must be >= 0, got {getattr(self, name)}")
        for name, allowed in (
            ("server_lr_schedule", LR_SCHEDULES),
            ("local_optimizer", LOCAL_OPTIMIZERS),
            ("client_weighting", CLIENT_WEIGHTINGS),
            ("dp_accountant", ACCOUNTANTS),
            ("secure_aggregation", AGGREGATIONS),
            ("item_ids", ITEM_ID_MODES),
            ("poison_attack", ATTACKS),
            ("download_compression", COMPRESSION_MODES),
            ("upload_compression", COMPRESSION_MODES),
        ):
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"{_kebab(name)} must be one of {allowed}, got {value!r}")
        if self.server_lr_schedule != "constant" and self.strategy not in SERVER_LR_STRATEGIES:
            raise ValueError(
                f"server-lr-schedule {self.server_lr_schedule!r} needs a strategy with a server"
                f" step size {SERVER_LR_STRATEGIES}; {self.strategy!r} has none"
            )
        if self.server_weight_decay and self.strategy not in DECAY_STRATEGIES:
            raise ValueError(
                f"server-weight-decay needs one of {DECAY_STRATEGIES} (decoupled, AdamW-style);"
                f" {self.strategy!r} does not support it"
            )
        if not 0.0 < self.fraction_train <= 1.0:
            raise ValueError(f"fraction-train must be in (0, 1], got {self.fraction_train}")
        for name in ("server_lr", "local_lr", "server_tau", "private_lr", "round_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{_kebab(name)} must be > 0, got {getattr(self, name)}")
        for name in ("server_beta1", "server_beta2", "cold_items"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{_kebab(name)} must be in [0, 1), got {getattr(self, name)}")
        for name in ("dp_delta", "local_dp_delta"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ValueError(f"{_kebab(name)} must be in (0, 1), got {getattr(self, name)}")
        if self.cold_items and self.shard_dir:
            raise ValueError(
                "cold-items is a simulation's protocol over a data set it splits itself; a"
                " device's sealed shard (shard-dir) carries no cold items: leave one of them out"
            )
        if (self.shard_dir or self.state_dir) and not self.key_file:
            raise ValueError("shard-dir and state-dir are encrypted: give key-file too")
        if self.user_level_dp:
            self._check_user_level_dp()
        else:
            named = [n for n in ("dp_noise_multiplier", "dp_target_epsilon") if getattr(self, n)]
            if named:
                raise ValueError(
                    f"{_kebab(named[0])} is set but dp-clip-norm is 0, so user-level DP is off:"
                    " set dp-clip-norm (C) to turn it on, or remove the setting"
                )
        if self.record_level_dp:
            self._check_record_level_dp()
        elif self.local_epsilon_budget:
            raise ValueError(
                "local-epsilon-budget is set but local-dp-noise-multiplier is 0, so devices run"
                " no DP-SGD and keep no ε to budget: set local-dp-noise-multiplier, or remove it"
            )
        if self.secure:
            self._check_secure_aggregation()
        self._check_low_rank()
        self._check_poisoning()
        if not self.item_id_table:
            self._check_without_item_ids()

    @property
    def compressed(self) -> bool:
        """Either direction of the exchange is compressed (devices then upload Δ)."""
        return (self.download_compression, self.upload_compression) != ("none", "none")

    @property
    def exchanges_updates(self) -> bool:
        """Devices send an encoded update Δ, not weights: compressed, or low-rank (CoLR)."""
        return self.compressed or self.colr_rank > 0

    @property
    def item_id_table(self) -> bool:
        """The model has an item-id table (``item-ids = "all"``)."""
        return self.item_ids == "all"

    @property
    def user_level_dp(self) -> bool:
        return self.dp_clip_norm > 0

    @property
    def record_level_dp(self) -> bool:
        return self.local_dp_noise_multiplier > 0

    @property
    def secure(self) -> bool:
        return self.secure_aggregation != "off"

    def warnings(self) -> list[str]:
        """Settings that work but protect less than a user may think (printed at start)."""
        found = []
        if self.user_level_dp and not self.secure:
            found.append(
                "user-level DP without secure aggregation: the released models are (ε, δ)-DP,"
                " but the server still receives each device's clipped update, from which"
                " interaction inference reads the device's items (AUC 0.95 on ml-100k,"
                ' docs/privacy.md); add secure-aggregation = "secagg+" to hide it'
            )
        return found

    def target_item_ids(self) -> tuple[str, ...]:
        """The target items named by id (empty for none, or before "tail:N" is resolved)."""
        if not self.target_items or self.target_items.startswith(TAIL_PREFIX):
            return ()
        return tuple(item.strip() for item in self.target_items.split(","))

    def tail_targets(self) -> int:
        """N of target-items = "tail:N" (0 otherwise)."""
        if not self.target_items.startswith(TAIL_PREFIX):
            return 0
        return int(self.target_items.removeprefix(TAIL_PREFIX))

    def secagg_settings(self) -> SecAggSettings:
        return SecAggSettings(
            neighbours=self.secagg_neighbours,
            threshold=self.secagg_threshold,
            clip_range=self.secagg_clip_range,
            quantization_bits=self.secagg_quantization_bits,
            compact=self.upload_compression == "int8",
        )

    def _check_secure_aggregation(self) -> None:
        if self.client_weighting != "uniform":
            raise ValueError(
                'secure aggregation needs client-weighting = "uniform": the server learns the'
                " sum of the updates only, so it cannot weight them by private example counts"
            )
        if self.clients_per_round and self.clients_per_round < MIN_SECURE_CLIENTS:
            raise ValueError(
                f"secure aggregation needs clients-per-round >= {MIN_SECURE_CLIENTS}, got"
                f" {self.clients_per_round}: a sum of two updates reveals each to the other"
            )
        self.secagg_settings()  # its own checks: neighbours, threshold, range, bits
        if self.user_level_dp and self.dp_clip_norm > self.secagg_clip_range:
            raise ValueError(
                f"dp-clip-norm {self.dp_clip_norm} > secagg-clip-range {self.secagg_clip_range}:"
                " a clipped update's coordinates could be clipped again, biasing the sum"
            )

    def _check_low_rank(self) -> None:
        if not 0 <= self.colr_rank < self.dim:
            raise ValueError(
                f"colr-rank must be in [0, dim = {self.dim}): the item table's update is"
                f" factored into rank colr-rank (0: dense), got {self.colr_rank}"
            )
        if self.colr_rank and self.record_level_dp:
            raise ValueError(
                "colr-rank with local-dp-noise-multiplier is not supported: DP-SGD's per-example"
                " clipping runs on the dense item table; use user-level DP (dp-clip-norm) with"
                " a low-rank exchange, or set colr-rank = 0"
            )

    def _check_poisoning(self) -> None:
        if self.target_items.startswith(TAIL_PREFIX):
            count = self.target_items.removeprefix(TAIL_PREFIX)
            if not count.isdigit() or int(count) < 1:
                raise ValueError(
                    f'target-items = "{self.target_items}": "tail:N" needs a whole N >= 1'
                )
        elif self.target_items:
            ids = [item.strip() for item in self.target_items.split(",")]
            if any(not item for item in ids) or len(set(ids)) != len(ids):
                raise ValueError(
                    f"target-items = {self.target_items!r}: give distinct item ids separated"
                    ' by commas, or "tail:N"'
                )
        if not 0.0 < self.poison_knowledge <= 1.0:
            raise ValueError(f"poison-knowledge must be in (0, 1], got {self.poison_knowledge}")
        if not 0.0 <= self.poison_fraction < 1.0:
            raise ValueError(f"poison-fraction must be in [0, 1), got {self.poison_fraction}")
        if self.poison_fraction and not self.target_items:
            raise ValueError(
                "poison-fraction is set: name the items the attack promotes (target-items ="
                ' "tail:5" or item ids)'
            )
        if self.secure and (self.norm_bound or self.row_norm_bound):
            raise ValueError(
                "norm-bound and row-norm-bound clip each device's update on the server, which"
                " secure aggregation hides: bound it on the devices with dp-clip-norm instead"
            )
        if self.secure and self.poison_fraction:
            raise ValueError(
                "poison-fraction with secure aggregation is not simulated: the malicious"
                " devices do not run the SecAgg+ protocol (turn one of the two off)"
            )
        if self.cold_items and self.target_items:
            raise ValueError(
                "cold-items with target-items (poisoning, exposure) is not simulated: the"
                " attack's knowledge and the tail items come from the plain split (a target"
                " could be a cold item); run them apart"
            )
        if self.poison_fraction and self.exchanges_updates:
            raise ValueError(
                "poison-fraction with a compressed or low-rank exchange is not simulated: the"
                " malicious devices upload float32 weights (set both compressions to none and"
                " colr-rank to 0)"
            )
        if self.secure and self.upload_compression == "fp16":
            raise ValueError(
                'upload-compression = "fp16" with secure aggregation: SecAgg+ masks integers'
                ' and quantizes the update itself; "int8" sizes that quantization to 2-byte'
                ' sums, "none" keeps secagg-quantization-bits'
            )

    def _check_without_item_ids(self) -> None:
        """Settings that act on the item-id table, refused when the model has none."""
        for name, what in (
            ("colr_rank", "factors the item table's update"),
            ("row_norm_bound", "bounds each item-table row of an update"),
            ("poison_fraction", "simulates attacks that push item-table rows"),
        ):
            if getattr(self, name):
                raise ValueError(
                    f'{_kebab(name)} {what}, and item-ids = "none" has no item table: set'
                    f' {_kebab(name)} to 0 or item-ids = "all"'
                )

    def _check_user_level_dp(self) -> None:
        if not (self.dp_noise_multiplier > 0 or self.dp_target_epsilon > 0):
            raise ValueError(
                "dp-clip-norm is set: give dp-noise-multiplier (z) or dp-target-epsilon"
                " (z is then calibrated to it)"
            )
        if self.client_weighting != "uniform":
            raise ValueError(
                'user-level DP needs client-weighting = "uniform": the noise is calibrated to'
                " each client's clipped update counting once"
            )
        if self.clients_per_round < 1:
            raise ValueError(
                "user-level DP needs clients-per-round >= 1: the expected cohort m sets"
                " both the sampling rate q = m/N and the noise std z*C/m"
            )

    def _check_record_level_dp(self) -> None:
        if self.client_weighting != "uniform":
            raise ValueError(
                'local DP needs client-weighting = "uniform": a device that declines at its'
                " budget sends a zero update with no examples (and counts stay private)"
            )
        if self.local_dp_clip_norm <= 0:
            raise ValueError(f"local-dp-clip-norm must be > 0, got {self.local_dp_clip_norm}")
        if self.local_optimizer != "sgd":
            raise ValueError('local DP-SGD trains with local-optimizer = "sgd"')
        for name in ("private_epochs", "proximal_mu"):
            if getattr(self, name):
                raise ValueError(
                    f"{_kebab(name)} must be 0 under local DP: every step that reads the"
                    " device's data must be a clipped, noised DP-SGD step"
                )

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> FederationConfig:
        """Parse kebab-case keys (Flower run config or a scenario's ``[run]`` table)."""
        known = {_kebab(f.name): f for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"unknown federation setting(s) {unknown}; known: {sorted(known)}")
        kwargs: dict[str, Any] = {}
        for key, value in values.items():
            f = known[key]
            kwargs[f.name] = _coerce(key, value, f.type)
        return cls(**kwargs)

    def to_mapping(self) -> dict[str, Any]:
        """Kebab-case dict, the inverse of :meth:`from_mapping`."""
        return {_kebab(k): v for k, v in asdict(self).items()}

    def synthetic(self) -> SyntheticConfig:
        """The generator settings when ``data`` is "synthetic"."""
        return SyntheticConfig(
            num_users=self.synthetic_users, num_items=self.synthetic_items, seed=self.seed
        )

    def data_settings(self) -> dict[str, Any]:
        """The settings every user's shard follows from (data set, threshold, split seed and
        the generator's size): what a shard pack or a shard folder records and is checked on."""
        settings: dict[str, Any] = {
            "data": self.data,
            "threshold": self.threshold,
            "seed": self.seed,
        }
        if self.cold_items:
            settings["cold-items"] = self.cold_items
        if self.data == SYNTHETIC:
            settings |= {
                "synthetic-users": self.synthetic_users,
                "synthetic-items": self.synthetic_items,
            }
        return settings

    def replace(self, **changes: Any) -> FederationConfig:
        return FederationConfig(**{**asdict(self), **changes})


def _kebab(name: str) -> str:
    return name.replace("_", "-")


ID_LISTS = ("target-items",)  # string settings of item ids: a lone id may parse as a number


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    kind = {"int": int, "float": float, "str": str}[str(annotation)]
    if key in ID_LISTS and isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # --set target-items=242
    if kind is not str and isinstance(value, bool):  # TOML's true would be read as 1
        raise ValueError(f"{key} must be a number, got {str(value).lower()}")
    if kind is str and not isinstance(value, str):
        raise ValueError(f"{key} must be a string, got {value!r}")
    if kind is int and isinstance(value, float) and not value.is_integer():
        raise ValueError(f"{key} must be an integer, got {value}")
    try:
        return kind(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{key} must be {kind.__name__}, got {value!r}") from err
