"""The federation's settings, parsed once from Flower's run config into frozen sections.

Every tunable is a flat kebab-case key — in ``[tool.flwr.app.config]`` (pyproject.toml), in
the scenario TOML files under ``simulations/``, in ``--set KEY=VALUE`` — and
:meth:`FederationConfig.from_mapping` is the only place that reads them. It sorts them by
audience into frozen sections, each checking its own values:

    data       which data and catalog, the threshold, the seed    (DataSettings)
    model      the shared model's width and item table              (ModelSettings)
    rounds     how many, how large, when evaluated                  (RoundSettings)
    server     the server optimizer and what it accepts             (ServerSettings)
    local      training on the device                               (LocalSettings)
    user_dp    user-level DP-FedAvg                                 (UserDPSettings)
    record_dp  record-level DP-SGD on the device                    (RecordDPSettings)
    secure     secure aggregation (SecAgg+)                         (SecureSettings)
    exchange   the wire forms: compression, low rank                (ExchangeSettings)
    storage    encrypted shards and node state (simulated nodes)    (StorageSettings)
    outputs    the run folder, the checkpoint resumed               (OutputSettings)
    simulation poisoning, synthetic populations, cold items,        (SimulationSettings)
               target items, the audit log

and :class:`FederationConfig` checks what spans sections. The **simulation** section is a
research harness's: a deployed ServerApp or device refuses any of its keys set
(``from_mapping(..., deployed=True)``), naming the key. Unknown keys are errors, not
silently ignored typos. Runtime handles (the runner's shard pack, the nodes a simulation
waits for) are arguments of the code that needs them, not settings.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import Field, dataclass, field, fields
from typing import TYPE_CHECKING, Any, ClassVar

from fedrec.common.compression import MODES as COMPRESSION_MODES
from fedrec.common.privacy import ACCOUNTANTS
from fedrec.common.secagg.primitives import MIN_SECURE_CLIENTS, SecAggSettings

if TYPE_CHECKING:
    from fedrec.common.data.synthetic import SyntheticConfig

__all__ = [
    "AGGREGATIONS",
    "ATTACKS",
    "CLIENT_WEIGHTINGS",
    "DECAY_STRATEGIES",
    "ITEM_ID_MODES",
    "LOCAL_OPTIMIZERS",
    "LR_SCHEDULES",
    "RETIRED_KEYS",
    "SERVER_LR_STRATEGIES",
    "STRATEGIES",
    "DataSettings",
    "ExchangeSettings",
    "FederationConfig",
    "LocalSettings",
    "ModelSettings",
    "OutputSettings",
    "RecordDPSettings",
    "RoundSettings",
    "SecureSettings",
    "ServerSettings",
    "SimulationSettings",
    "StorageSettings",
    "UserDPSettings",
    "simulation_settings_set",
]

STRATEGIES = ("fedavg", "fedavgm", "fedadam", "fedyogi", "fedprox")
SERVER_LR_STRATEGIES = ("fedavgm", "fedadam", "fedyogi")  # the ones with a server step size
DECAY_STRATEGIES = ("fedadam", "fedyogi")  # server optimizers with decoupled weight decay
LR_SCHEDULES = ("constant", "cosine")
LOCAL_OPTIMIZERS = ("sgd", "adam")
CLIENT_WEIGHTINGS = ("examples", "uniform")
AGGREGATIONS = ("off", "secagg+")  # secure aggregation of the train updates (server/secagg.py)
ATTACKS = ("a-ra", "a-hum", "fedrecattack")  # item promotion (simulations/poisoning.py)
ITEM_ID_MODES = ("all", "none")  # the item-id table: a row per item, or none (features only)
TAIL_PREFIX = "tail:"  # target-items = "tail:N": N seeded items of the less popular half
SYNTHETIC = "synthetic"  # data = "synthetic": the embedded generator (common/data/synthetic.py)
# keys earlier versions wrote into config.json: runtime handles, now arguments
RETIRED_KEYS = ("shard-pack", "expected-nodes")


def setting(default: Any, key: str = "") -> Any:
    """A section field, its kebab-case key given where it is not the field's own name."""
    return field(default=default, metadata={"key": key} if key else {})


def key_of(f: Field[Any]) -> str:
    return str(f.metadata.get("key") or f.name.replace("_", "-"))


class Section:
    """A frozen group of settings; checks the types and ranges of its own fields."""

    POSITIVE: ClassVar[tuple[str, ...]] = ()  # fields that must be >= 1
    NON_NEGATIVE: ClassVar[tuple[str, ...]] = ()  # fields that must be >= 0
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {}  # fields with a fixed set of values

    def __post_init__(self) -> None:
        for f in fields(self):  # type: ignore[arg-type]
            value, key = getattr(self, f.name), key_of(f)
            if str(f.type) in ("int", "float") and isinstance(value, bool):
                raise ValueError(f"{key} must be a number, got {value}")
            if str(f.type) == "float" and not math.isfinite(value):
                raise ValueError(f"{key} must be a finite number, got {value}")
            if f.name in self.POSITIVE and value < 1:
                raise ValueError(f"{key} must be >= 1, got {value}")
            if f.name in self.NON_NEGATIVE and value < 0:
                raise ValueError(f"{key} must be >= 0, got {value}")
            if f.name in self.CHOICES and value not in self.CHOICES[f.name]:
                raise ValueError(f"{key} must be one of {self.CHOICES[f.name]}, got {value!r}")
        self.check()

    def check(self) -> None:
        """The section's own constraints beyond types and ranges."""

    def key(self, name: str) -> str:
        """The kebab-case key of field ``name`` (for messages)."""
        return next(key_of(f) for f in fields(self) if f.name == name)  # type: ignore[arg-type]

    def _in_unit(self, *names: str, closed: str = "[)") -> None:
        for name in names:
            value = getattr(self, name)
            low_ok = value >= 0.0 if closed[0] == "[" else value > 0.0
            high_ok = value < 1.0 if closed[1] == ")" else value <= 1.0
            if not (low_ok and high_ok):
                interval = f"{closed[0]}0, 1{closed[1]}"
                raise ValueError(f"{self.key(name)} must be in {interval}, got {value}")


@dataclass(frozen=True)
class DataSettings(Section):
    """Which interactions and catalog: every simulated node derives its shard from these."""

    data: str = "synthetic"  # a data-set path or "synthetic" (simulations and devices only)
    catalog: str = ""  # the published catalog file (fedrec catalog build)
    threshold: float = 0.0  # ratings >= threshold are interactions
    seed: int = 0  # split, evaluation candidates, client sampling, model init


@dataclass(frozen=True)
class ModelSettings(Section):
    """The seed model's shape."""

    dim: int = 64  # id-embedding and tower width
    item_ids: str = "all"  # all: an item-id table row per item; none: items are their
    # catalog features alone (a smaller shared model: user-level DP noises fewer coordinates)

    POSITIVE = ("dim",)
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {"item_ids": ITEM_ID_MODES}

    @property
    def item_id_table(self) -> bool:
        """The model has an item-id table (``item-ids = "all"``)."""
        return self.item_ids == "all"


@dataclass(frozen=True)
class RoundSettings(Section):
    """How many rounds, who takes part, when the model is evaluated."""

    num_rounds: int = 20
    clients_per_round: int = 50  # exact count per round (0: use fraction-train)
    fraction_train: float = 0.1  # used when clients-per-round is 0
    min_clients: int = 2  # a round starts once this many nodes are connected
    round_timeout: float = 600.0  # seconds a round (and the wait for its nodes) may take
    eval_every: int = 5  # federated evaluation every k rounds (and after the last)
    eval_clients: int = 0  # a fixed panel of this many nodes, asked at every evaluation (0: all)

    POSITIVE = ("num_rounds", "min_clients", "eval_every")
    NON_NEGATIVE = ("clients_per_round", "eval_clients")

    def check(self) -> None:
        if not 0.0 < self.fraction_train <= 1.0:
            raise ValueError(f"fraction-train must be in (0, 1], got {self.fraction_train}")
        if self.round_timeout <= 0:
            raise ValueError(f"round-timeout must be > 0, got {self.round_timeout}")


@dataclass(frozen=True)
class ServerSettings(Section):
    """The server optimizer, and what the server accepts of an update."""

    strategy: str = "fedavg"  # fedavg | fedavgm | fedadam | fedyogi | fedprox
    lr: float = setting(1.0, "server-lr")  # FedAvgM: step on the mean update; FedAdam/FedYogi: η
    lr_schedule: str = setting("constant", "server-lr-schedule")  # constant | cosine
    beta1: float = setting(0.9, "server-beta1")  # FedAdam/FedYogi momentum; FedAvgM momentum
    beta2: float = setting(0.99, "server-beta2")
    tau: float = setting(1e-3, "server-tau")  # FedAdam/FedYogi adaptivity
    weight_decay: float = setting(0.0, "server-weight-decay")  # FedAdam/FedYogi, decoupled
    client_weighting: str = "examples"  # weight of a client's update: examples | uniform
    max_update_norm: float = 0.0  # refuse a longer update (0: the norm of the start model)
    # norm bounding (server/robust.py): each accepted update is clipped before averaging
    norm_bound: float = 0.0  # L2 bound of a device's whole update (0: off)
    row_norm_bound: float = 0.0  # L2 bound of each item-table row of a device's update (0: off)

    NON_NEGATIVE = ("weight_decay", "max_update_norm", "norm_bound", "row_norm_bound")
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        "strategy": STRATEGIES,
        "lr_schedule": LR_SCHEDULES,
        "client_weighting": CLIENT_WEIGHTINGS,
    }

    def check(self) -> None:
        if self.lr_schedule != "constant" and self.strategy not in SERVER_LR_STRATEGIES:
            raise ValueError(
                f"server-lr-schedule {self.lr_schedule!r} needs a strategy with a server"
                f" step size {SERVER_LR_STRATEGIES}; {self.strategy!r} has none"
            )
        if self.weight_decay and self.strategy not in DECAY_STRATEGIES:
            raise ValueError(
                f"server-weight-decay needs one of {DECAY_STRATEGIES} (decoupled, AdamW-style);"
                f" {self.strategy!r} does not support it"
            )
        for name in ("lr", "tau"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{self.key(name)} must be > 0, got {getattr(self, name)}")
        self._in_unit("beta1", "beta2")


@dataclass(frozen=True)
class LocalSettings(Section):
    """Training on the device."""

    threads: int = setting(1, "client-threads")  # BLAS (and DP-SGD's torch) threads per call
    epochs: int = setting(1, "local-epochs")
    optimizer: str = setting("sgd", "local-optimizer")  # of the shared parameters: sgd | adam
    lr: float = setting(1.0, "local-lr")
    batch_size: int = setting(64, "local-batch-size")
    private_epochs: int = 0  # epochs fitting only the user embedding before the joint epochs
    private_lr: float = 0.1  # Adam learning rate of the private user embedding
    private_weight_decay: float = 0.0  # its decoupled weight decay (AdamW)
    negatives: int = 4
    eval_private_epochs: int = 0  # private epochs refreshing the user row before evaluating
    proximal_mu: float = 0.0  # FedProx μ (sent to the devices)

    POSITIVE = ("threads", "epochs", "batch_size")
    NON_NEGATIVE = (
        "private_epochs",
        "private_weight_decay",
        "negatives",
        "eval_private_epochs",
        "proximal_mu",
    )
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {"optimizer": LOCAL_OPTIMIZERS}

    def check(self) -> None:
        for name in ("lr", "private_lr"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{self.key(name)} must be > 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class UserDPSettings(Section):
    """User-level DP: DP-FedAvg (McMahan et al., 2018), server/dp_fedavg.py."""

    clip_norm: float = setting(0.0, "dp-clip-norm")  # C: clip of each update (0: off)
    noise_multiplier: float = setting(0.0, "dp-noise-multiplier")  # z (0: from the target)
    target_epsilon: float = setting(0.0, "dp-target-epsilon")  # stop before ε exceeds it
    delta: float = setting(1e-4, "dp-delta")
    accountant: str = setting("rdp", "dp-accountant")  # rdp | prv (both ledgers)

    NON_NEGATIVE = ("clip_norm", "noise_multiplier", "target_epsilon")
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {"accountant": ACCOUNTANTS}

    @property
    def enabled(self) -> bool:
        return self.clip_norm > 0

    def check(self) -> None:
        self._in_unit("delta", closed="()")
        if self.enabled and not (self.noise_multiplier > 0 or self.target_epsilon > 0):
            raise ValueError(
                "dp-clip-norm is set: give dp-noise-multiplier (z) or dp-target-epsilon"
                " (z is then calibrated to it)"
            )
        if not self.enabled:
            named = [n for n in ("noise_multiplier", "target_epsilon") if getattr(self, n)]
            if named:
                raise ValueError(
                    f"{self.key(named[0])} is set but dp-clip-norm is 0, so user-level DP is"
                    " off: set dp-clip-norm (C) to turn it on, or remove the setting"
                )


@dataclass(frozen=True)
class RecordDPSettings(Section):
    """Record-level DP on the device: Opacus DP-SGD, client/dp_sgd.py."""

    noise_multiplier: float = setting(0.0, "local-dp-noise-multiplier")  # z of DP-SGD (0: off)
    clip_norm: float = setting(1.0, "local-dp-clip-norm")  # per-example gradient clip
    delta: float = setting(1e-4, "local-dp-delta")  # δ of each device's own ledger
    epsilon_budget: float = setting(0.0, "local-epsilon-budget")  # decline past it (0: none)

    NON_NEGATIVE = ("noise_multiplier", "epsilon_budget")

    @property
    def enabled(self) -> bool:
        return self.noise_multiplier > 0

    def check(self) -> None:
        self._in_unit("delta", closed="()")
        if self.enabled and self.clip_norm <= 0:
            raise ValueError(f"local-dp-clip-norm must be > 0, got {self.clip_norm}")
        if not self.enabled and self.epsilon_budget:
            raise ValueError(
                "local-epsilon-budget is set but local-dp-noise-multiplier is 0, so devices run"
                " no DP-SGD and keep no ε to budget: set local-dp-noise-multiplier, or remove it"
            )


@dataclass(frozen=True)
class SecureSettings(Section):
    """Secure aggregation: SecAgg+ (Bell et al., 2020), server/secagg.py and client/secagg.py."""

    mode: str = setting("off", "secure-aggregation")  # off | secagg+
    neighbours: int = setting(0, "secagg-neighbours")  # k; 0: 2*ceil(log2 n); >= n-1: all
    threshold: float = setting(0.5, "secagg-threshold")  # fraction of a secret's k+1 shares
    clip_range: float = setting(8.0, "secagg-clip-range")  # c: coordinates clipped to [-c, c]
    quantization_bits: int = setting(22, "secagg-quantization-bits")  # [-c, c] on 2^b + 1 levels

    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {"mode": AGGREGATIONS}

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    def settings(self, *, compact: bool = False) -> SecAggSettings:
        """The protocol's settings (``compact``: sums in 2-byte words, int8 uploads)."""
        return SecAggSettings(
            neighbours=self.neighbours,
            threshold=self.threshold,
            clip_range=self.clip_range,
            quantization_bits=self.quantization_bits,
            compact=compact,
        )

    def check(self) -> None:
        if self.enabled:
            self.settings()  # its own checks: neighbours, threshold, range, bits


@dataclass(frozen=True)
class ExchangeSettings(Section):
    """The wire form of the shared group (common/channel.py)."""

    download: str = setting("none", "download-compression")  # the model sent: none|fp16|int8
    upload: str = setting("none", "upload-compression")  # the update Δ sent back
    # CoLR (common/colr.py): the item table's update as a rank-r factor against a fresh
    # public basis each round; 0: the dense update
    colr_rank: int = 0

    NON_NEGATIVE = ("colr_rank",)
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        "download": COMPRESSION_MODES,
        "upload": COMPRESSION_MODES,
    }

    @property
    def compressed(self) -> bool:
        """Either direction is compressed (devices then upload Δ)."""
        return (self.download, self.upload) != ("none", "none")

    @property
    def sends_updates(self) -> bool:
        """Devices send an encoded update Δ, not weights: compressed, or low-rank."""
        return self.compressed or self.colr_rank > 0


@dataclass(frozen=True)
class StorageSettings(Section):
    """Sealed data on simulated nodes (client/encrypted_shards.py, client/secure_store.py);
    a deployed device names its own store in its node config."""

    shard_dir: str = ""  # read each node's shard from this encrypted folder (fedrec data encrypt)
    key_file: str = ""  # 32-byte key file of shard-dir and state-dir (kept outside both)
    state_dir: str = ""  # keep each node's private state + DP ledger here, encrypted

    def check(self) -> None:
        if (self.shard_dir or self.state_dir) and not self.key_file:
            raise ValueError("shard-dir and state-dir are encrypted: give key-file too")


@dataclass(frozen=True)
class OutputSettings(Section):
    """What the server writes, and where a run continues from."""

    out_dir: str = ""  # run folder the server writes records, checkpoints, model into
    resume: str = ""  # checkpoint (.npz) or run folder to resume from


@dataclass(frozen=True)
class SimulationSettings(Section):
    """A research harness's settings: a deployed ServerApp or device refuses them."""

    synthetic_users: int = 500  # the synthetic population (data = "synthetic")
    synthetic_items: int = 1000
    cold_items: float = 0.0  # hold this fraction of the items out of training entirely and
    # rank each user's latest one among them (common/data/cold.py)
    target_items: str = ""  # item ids, comma-separated, or "tail:N": evaluation adds ER@5/10
    # item promotion (simulations/poisoning.py)
    poison_fraction: float = 0.0  # malicious devices added, as a fraction of the users
    poison_attack: str = "a-ra"  # a-ra | a-hum (Rong et al., IJCAI 2022) | fedrecattack
    poison_knowledge: float = 0.01  # fedrecattack: fraction of train interactions it knows
    poison_norm: float = 0.0  # L2 norm of each malicious update (0: 0.9 x max-update-norm)
    audit_log: str = ""  # if set, every client reply is recorded here (JSON lines)

    POSITIVE = ("synthetic_users", "synthetic_items")
    NON_NEGATIVE = ("poison_norm",)
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {"poison_attack": ATTACKS}

    def check(self) -> None:
        self._in_unit("cold_items", "poison_fraction")
        if not 0.0 < self.poison_knowledge <= 1.0:
            raise ValueError(f"poison-knowledge must be in (0, 1], got {self.poison_knowledge}")
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
        if self.poison_fraction and not self.target_items:
            raise ValueError(
                "poison-fraction is set: name the items the attack promotes (target-items ="
                ' "tail:5" or item ids)'
            )
        if self.cold_items and self.target_items:
            raise ValueError(
                "cold-items with target-items (poisoning, exposure) is not simulated: the"
                " attack's knowledge and the tail items come from the plain split (a target"
                " could be a cold item); run them apart"
            )

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


SECTIONS: dict[str, type[Section]] = {
    "data": DataSettings,
    "model": ModelSettings,
    "rounds": RoundSettings,
    "server": ServerSettings,
    "local": LocalSettings,
    "user_dp": UserDPSettings,
    "record_dp": RecordDPSettings,
    "secure": SecureSettings,
    "exchange": ExchangeSettings,
    "storage": StorageSettings,
    "outputs": OutputSettings,
    "simulation": SimulationSettings,
}


def _keys() -> dict[str, tuple[str, str, str]]:
    """kebab-case key → (section, field, the field's type), for every setting."""
    out: dict[str, tuple[str, str, str]] = {}
    for section, kind in SECTIONS.items():
        for f in fields(kind):  # type: ignore[arg-type]
            out[key_of(f)] = (section, f.name, str(f.type))
    return out


KEYS = _keys()
SIMULATION_KEYS = tuple(k for k, (section, _, _) in KEYS.items() if section == "simulation")


@dataclass(frozen=True)
class FederationConfig:
    """A run's settings, by section (see the module docstring)."""

    data: DataSettings = field(default_factory=DataSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    rounds: RoundSettings = field(default_factory=RoundSettings)
    server: ServerSettings = field(default_factory=ServerSettings)
    local: LocalSettings = field(default_factory=LocalSettings)
    user_dp: UserDPSettings = field(default_factory=UserDPSettings)
    record_dp: RecordDPSettings = field(default_factory=RecordDPSettings)
    secure: SecureSettings = field(default_factory=SecureSettings)
    exchange: ExchangeSettings = field(default_factory=ExchangeSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    outputs: OutputSettings = field(default_factory=OutputSettings)
    simulation: SimulationSettings = field(default_factory=SimulationSettings)

    def __post_init__(self) -> None:
        """What spans sections."""
        sim = self.simulation
        if sim.cold_items and self.storage.shard_dir:
            raise ValueError(
                "cold-items is a simulation's protocol over a data set it splits itself; a"
                " device's sealed shard (shard-dir) carries no cold items: leave one of them out"
            )
        if self.user_dp.enabled:
            self._check_user_level_dp()
        if self.record_dp.enabled:
            self._check_record_level_dp()
        if self.secure.enabled:
            self._check_secure_aggregation()
        self._check_exchange()
        self._check_poisoning()
        if not self.model.item_id_table:
            self._check_without_item_ids()

    # --- what the layers ask ------------------------------------------------------------
    def warnings(self) -> list[str]:
        """Settings that work but protect less than a user may think (printed at start)."""
        found = []
        if self.user_dp.enabled and not self.secure.enabled:
            found.append(
                "user-level DP without secure aggregation: the released models are (ε, δ)-DP,"
                " but the server still receives each device's clipped update, from which"
                " interaction inference reads the device's items (AUC 0.95 on ml-100k,"
                ' docs/privacy.md); add secure-aggregation = "secagg+" to hide it'
            )
        return found

    def secagg_settings(self) -> SecAggSettings:
        """SecAgg+'s settings for this run: compact sums with an int8 upload."""
        return self.secure.settings(compact=self.exchange.upload == "int8")

    def synthetic(self) -> SyntheticConfig:
        """The generator settings when ``data`` is "synthetic"."""
        from fedrec.common.data.synthetic import SyntheticConfig

        sim = self.simulation
        return SyntheticConfig(
            num_users=sim.synthetic_users, num_items=sim.synthetic_items, seed=self.data.seed
        )

    def data_settings(self) -> dict[str, Any]:
        """The settings every user's shard follows from (data set, threshold, split seed and
        the generator's size): what a shard pack or a shard folder records and is checked on."""
        settings: dict[str, Any] = {
            "data": self.data.data,
            "threshold": self.data.threshold,
            "seed": self.data.seed,
        }
        if self.simulation.cold_items:
            settings["cold-items"] = self.simulation.cold_items
        if self.data.data == SYNTHETIC:
            settings |= {
                "synthetic-users": self.simulation.synthetic_users,
                "synthetic-items": self.simulation.synthetic_items,
            }
        return settings

    # --- parsing ------------------------------------------------------------------------
    @classmethod
    def from_mapping(
        cls, values: Mapping[str, Any], *, deployed: bool = False, recorded: bool = False
    ) -> FederationConfig:
        """Parse kebab-case keys (Flower run config, a scenario's ``[run]`` table, ``--set``).

        ``deployed``: the run config of a deployed ServerApp or device, which refuses every
        simulation setting that is set (not its default), naming the key. ``recorded``: a
        run's config.json, where keys that earlier versions wrote and that are now runtime
        handles (:data:`RETIRED_KEYS`) are dropped."""
        values = dict(values)
        if recorded:
            for retired in RETIRED_KEYS:
                values.pop(retired, None)
        unknown = sorted(set(values) - set(KEYS))
        if unknown:
            raise ValueError(f"unknown federation setting(s) {unknown}; known: {sorted(KEYS)}")
        by_section: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
        for key, value in values.items():
            section, name, kind = KEYS[key]
            by_section[section][name] = _coerce(key, value, kind)
        if deployed:
            _refuse_simulation_settings(by_section["simulation"])
        return cls(**{name: SECTIONS[name](**kw) for name, kw in by_section.items()})  # type: ignore[arg-type]

    def to_mapping(self, *, deployed: bool = False) -> dict[str, Any]:
        """Kebab-case dict, the inverse of :meth:`from_mapping`; ``deployed``: without the
        simulation section (what a deployed app's run config carries)."""
        out: dict[str, Any] = {}
        for section in SECTIONS:
            if deployed and section == "simulation":
                continue
            part = getattr(self, section)
            for f in fields(part):
                out[key_of(f)] = getattr(part, f.name)
        return out

    def replace(self, **changes: Any) -> FederationConfig:
        """This config with settings changed, named by their keys in snake case
        (``out_dir=…`` for ``out-dir``), checked as a whole again."""
        values = self.to_mapping()
        for name, value in changes.items():
            key = name.replace("_", "-")
            if key not in KEYS:
                raise ValueError(f"unknown federation setting {key!r}")
            values[key] = value
        return FederationConfig.from_mapping(values)

    # --- checks across sections ---------------------------------------------------------
    def _check_user_level_dp(self) -> None:
        if self.server.client_weighting != "uniform":
            raise ValueError(
                'user-level DP needs client-weighting = "uniform": the noise is calibrated to'
                " each client's clipped update counting once"
            )
        if self.rounds.clients_per_round < 1:
            raise ValueError(
                "user-level DP needs clients-per-round >= 1: the expected cohort m sets"
                " both the sampling rate q = m/N and the noise std z*C/m"
            )

    def _check_record_level_dp(self) -> None:
        if self.server.client_weighting != "uniform":
            raise ValueError(
                'local DP needs client-weighting = "uniform": a device that declines at its'
                " budget sends a zero update with no examples (and counts stay private)"
            )
        if self.local.optimizer != "sgd":
            raise ValueError('local DP-SGD trains with local-optimizer = "sgd"')
        for name in ("private_epochs", "proximal_mu"):
            if getattr(self.local, name):
                raise ValueError(
                    f"{self.local.key(name)} must be 0 under local DP: every step that reads the"
                    " device's data must be a clipped, noised DP-SGD step"
                )

    def _check_secure_aggregation(self) -> None:
        if self.server.client_weighting != "uniform":
            raise ValueError(
                'secure aggregation needs client-weighting = "uniform": the server learns the'
                " sum of the updates only, so it cannot weight them by private example counts"
            )
        m = self.rounds.clients_per_round
        if m and m < MIN_SECURE_CLIENTS:
            raise ValueError(
                f"secure aggregation needs clients-per-round >= {MIN_SECURE_CLIENTS}, got"
                f" {m}: a sum of two updates reveals each to the other"
            )
        if self.user_dp.enabled and self.user_dp.clip_norm > self.secure.clip_range:
            raise ValueError(
                f"dp-clip-norm {self.user_dp.clip_norm} > secagg-clip-range"
                f" {self.secure.clip_range}: a clipped update's coordinates could be clipped"
                " again, biasing the sum"
            )
        if self.server.norm_bound or self.server.row_norm_bound:
            raise ValueError(
                "norm-bound and row-norm-bound clip each device's update on the server, which"
                " secure aggregation hides: bound it on the devices with dp-clip-norm instead"
            )
        if self.exchange.upload == "fp16":
            raise ValueError(
                'upload-compression = "fp16" with secure aggregation: SecAgg+ masks integers'
                ' and quantizes the update itself; "int8" sizes that quantization to 2-byte'
                ' sums, "none" keeps secagg-quantization-bits'
            )

    def _check_exchange(self) -> None:
        rank = self.exchange.colr_rank
        if not 0 <= rank < self.model.dim:
            raise ValueError(
                f"colr-rank must be in [0, dim = {self.model.dim}): the item table's update is"
                f" factored into rank colr-rank (0: dense), got {rank}"
            )
        if rank and self.record_dp.enabled:
            raise ValueError(
                "colr-rank with local-dp-noise-multiplier is not supported: DP-SGD's per-example"
                " clipping runs on the dense item table; use user-level DP (dp-clip-norm) with"
                " a low-rank exchange, or set colr-rank = 0"
            )

    def _check_poisoning(self) -> None:
        sim = self.simulation
        if self.secure.enabled and sim.poison_fraction:
            raise ValueError(
                "poison-fraction with secure aggregation is not simulated: the malicious"
                " devices do not run the SecAgg+ protocol (turn one of the two off)"
            )
        if sim.poison_fraction and self.exchange.sends_updates:
            raise ValueError(
                "poison-fraction with a compressed or low-rank exchange is not simulated: the"
                " malicious devices upload float32 weights (set both compressions to none and"
                " colr-rank to 0)"
            )

    def _check_without_item_ids(self) -> None:
        """Settings that act on the item-id table, refused when the model has none."""
        table = (
            ("colr-rank", self.exchange.colr_rank, "factors the item table's update"),
            ("row-norm-bound", self.server.row_norm_bound, "bounds each item-table row"),
            ("poison-fraction", self.simulation.poison_fraction, "attacks item-table rows"),
        )
        for key, value, what in table:
            if value:
                raise ValueError(
                    f'{key} {what}, and item-ids = "none" has no item table: set {key} to 0 or'
                    ' item-ids = "all"'
                )


def simulation_settings_set(simulation: Mapping[str, Any]) -> dict[str, Any]:
    """Of the simulation section's fields (by name), the ones set to something other than
    their default, by key, in the order given."""
    defaults = SimulationSettings()
    return {
        defaults.key(name): value
        for name, value in simulation.items()
        if value != getattr(defaults, name)
    }


def _refuse_simulation_settings(simulation: Mapping[str, Any]) -> None:
    """A deployed ServerApp or device: no simulation setting may be set."""
    for key, value in simulation_settings_set(simulation).items():
        raise ValueError(
            f"{key} = {value!r} is a simulation setting (poisoning, synthetic populations,"
            " cold items, target items, the audit log): a deployed server or device"
            f" refuses it; remove {key} from the run config, or run it with fedrec simulate"
        )


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
