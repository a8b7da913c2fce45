"""Server strategies: Flower's FedAvg / FedAvgM / FedAdam / FedYogi / FedProx plus a recorder.

:class:`RoundRecorder` is a mixin composed in front of any Flower Message-API strategy (see
:func:`make_strategy`); it adds, without touching the aggregation math:
  * an exact number of clients per round (or a fraction), and evaluation every k rounds;
  * a per-round record: clients sampled/replied/failed, train loss, bytes down and up per
    client, round seconds, evaluation metrics;
  * a checkpoint of the shared model (and server-optimizer state) after every round, so a run
    can resume from it;
  * a schedule of the server step size (FedAvgM/FedAdam/FedYogi), by absolute round, so a
    resumed run continues the same schedule;
  * decoupled weight decay after the FedAdam/FedYogi step (as AdamW, Loshchilov & Hutter
    2019): weight matrices shrink by ``lr_t · wd`` each round. Flower's FedOpt takes the next
    round's starting point from the arrays this returns, so the decay is part of the state.
Evaluation metrics are aggregated as sums over users (each user holds one held-out item), so
a user that cannot be evaluated (fewer than 3 interactions) counts as nothing, not as a zero.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAdam, FedAvg, FedAvgM, FedProx, FedYogi

from fedrec.common import keys
from fedrec.common.fedconfig import FederationConfig
from fedrec.common.privacy import PrivacyLedger
from fedrec.common.runs import write_json
from fedrec.common.secagg.grid import secure_sum
from fedrec.server.dp_fedavg import DPFedAvg, RecordLevelTally, UserLevelDP
from fedrec.server.grid import message_bytes

CHECKPOINT = "checkpoint.npz"
CHECKPOINT_META = "checkpoint.json"
ROUNDS_LOG = "rounds.jsonl"
META_KEY = "meta/json"  # the round and privacy ledger, inside the checkpoint file


def scheduled_lr(base: float, schedule: str, round_: int, total_rounds: int) -> float:
    """Server step size of round ``round_`` (1-based) of ``total_rounds``.

    ``cosine`` decays from ``base`` at round 1 towards 0 after the last round (Loshchilov &
    Hutter, 2017), as the centralized trainer does over its epochs: late rounds, whose
    averaged update is mostly sampling noise, take small steps.
    """
    if schedule == "constant":
        return base
    if schedule == "cosine":
        progress = min(max(round_ - 1, 0), total_rounds) / max(total_rounds, 1)
        return base * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown server-lr-schedule {schedule!r}: use constant or cosine")


# The metric Flower's averaging weighs each client's update by. "uniform" counts every client
# once: with SGD client updates a heavy user's update already grows with its number of local
# steps, so weighting it by its examples as well counts its data about twice (and user-level
# DP needs uniform weights).
WEIGHT_KEYS = {"examples": keys.NUM_EXAMPLES, "uniform": keys.UNIT_WEIGHT}

# Where each Flower strategy keeps its server step size.
SERVER_LR_ATTRIBUTE = {"fedadam": "eta", "fedyogi": "eta", "fedavgm": "server_learning_rate"}


def aggregate_user_metrics(records: list[RecordDict], weight_key: str) -> MetricRecord:
    """Mean of each metric over evaluated users (weight = ``users``: 1 or 0 per client)."""
    totals: dict[str, float] = {}
    users = 0
    for rd in records:
        metrics = rd[keys.METRICS]
        n = int(metrics.get(keys.USERS, 0))
        users += n
        for k, v in metrics.items():
            if k not in (keys.USERS, keys.NUM_EXAMPLES, keys.UNIT_WEIGHT) and n:
                totals[k] = totals.get(k, 0.0) + float(v) * n
    means = {k: v / users for k, v in totals.items()} if users else {}
    return MetricRecord({keys.USERS: users, **means})


class RoundRecorder:
    """Mixin: put it before a Flower strategy class in the bases (see :func:`make_strategy`)."""

    def setup_recorder(
        self,
        *,
        clients_per_round: int,
        eval_every: int,
        eval_clients: int,
        num_rounds: int,
        run_dir: Path | None,
        round_offset: int = 0,
        on_round: Callable[[dict[str, Any]], None] | None = None,
        server_lr: Callable[[int], float] | None = None,
        server_lr_attribute: str = "",
        weight_decay: float = 0.0,
        record_tally: RecordLevelTally | None = None,
        secure_report: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.record_tally = record_tally
        self.secure_report = secure_report
        self.server_lr = server_lr
        self.weight_decay = weight_decay
        self.server_lr_attribute = server_lr_attribute
        self.clients_per_round = clients_per_round
        self.eval_every = eval_every
        self.eval_clients = eval_clients
        self.num_rounds = num_rounds
        self.run_dir = run_dir
        self.round_offset = round_offset
        self.on_round = on_round
        self.records: list[dict[str, Any]] = []
        self._current: dict[str, Any] = {}
        self._t0 = 0.0

    # --- training -----------------------------------------------------------------------
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._t0 = time.perf_counter()
        if self.clients_per_round:
            self._exact(grid, self.clients_per_round, "train")
        messages = list(super().configure_train(server_round, arrays, config, grid))  # type: ignore[misc]
        down = message_bytes(messages[0]) if messages else 0
        self._current = {
            "round": server_round + self.round_offset,
            "clients_sampled": len(messages),
            "bytes_down_per_client": down,
        }
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        forged = 0
        if self.secure_report is None:  # only the secure grid builds aggregate replies
            forged = sum(secure_sum(m)[1] for m in replies)
            replies = [m for m in replies if not secure_sum(m)[1]]
        ok = [m for m in replies if not m.has_error()]
        ups = [message_bytes(m) for m in ok]
        if replies and not ok and not isinstance(self, DPFedAvg):
            # (under DP a round whose cohort all failed is still a round: noise only)
            reason = (replies[0].error.reason or "")[-2000:]
            raise RuntimeError(
                f"round {server_round + self.round_offset}: all {len(replies)} clients failed;"
                f" first error: {reason}"
            )
        # the absolute round: FedAdam/FedYogi's bias correction must not restart on a resume
        absolute = server_round + self.round_offset
        decay = 1.0  # decoupled weight decay of this round's weight matrices
        if self.server_lr is not None:
            lr = self.server_lr(absolute)
            setattr(self, self.server_lr_attribute, lr)
            self._current["server_lr"] = lr
            decay = 1.0 - lr * self.weight_decay
        arrays, metrics = super().aggregate_train(absolute, replies)  # type: ignore[misc]
        if arrays is not None:  # FedAdam/FedYogi return float64: keep the wire format float32
            wire = {}
            for k, v in arrays.items():
                value = v.numpy() * decay if k.endswith(".weight") else v.numpy()
                wire[k] = Array(value.astype(np.float32, copy=False))
            arrays = ArrayRecord(wire)
        rec = self._current
        rec.update(
            clients_replied=len(ok),
            clients_failed=len(replies) - len(ok),
            errors=sorted({(m.error.reason or "")[-300:] for m in replies if m.has_error()})[:3],
            bytes_up_per_client=float(np.mean(ups)) if ups else 0.0,
            bytes_up_total=int(sum(ups)),
            bytes_down_total=rec["bytes_down_per_client"] * rec["clients_sampled"],
            train_loss=float(metrics[keys.TRAIN_LOSS]) if metrics else None,
            returning=float(metrics.get(keys.RETURNING, 0.0)) if metrics else None,
            train_seconds=time.perf_counter() - self._t0,
        )
        if forged:
            rec["clients_failed"] += forged
            rec["errors"] = [*rec["errors"], f"{forged} forged aggregate replies dropped"][:3]
        if self.secure_report is not None:  # the four stages' traffic, not the one aggregate
            report = self.secure_report()
            if report.get("all_failed") and not isinstance(self, DPFedAvg):
                raise RuntimeError(
                    f"round {absolute}: every client refused the secure round at stage"
                    f" {report['all_failed']}; first error: {(report['errors'] or [''])[0]}"
                )
            n = max(report["clients"], 1)
            rec.update(
                clients_replied=report["survivors"],
                clients_failed=report["clients"] - report["survivors"],
                bytes_down_per_client=report["bytes_down"] / n,
                bytes_up_per_client=report["bytes_up"] / n,
                bytes_down_total=report["bytes_down"],
                bytes_up_total=report["bytes_up"],
                errors=report["errors"],
                secagg=dict(report),
            )
        privacy = self._privacy_record(ok)
        if privacy:
            rec["privacy"] = privacy
        if arrays is not None and self.run_dir is not None:
            self._checkpoint(arrays, server_round + self.round_offset)
        return arrays, metrics

    def _privacy_record(self, ok: list[Message]) -> dict[str, Any]:
        """This round's ``privacy`` entry: the user-level ledger (if DP-FedAvg is composed
        in) and the devices' record-level ε (if they report one)."""
        privacy: dict[str, Any] = {}
        dp_record = getattr(self, "dp_record", None)  # set by server.dp.DPFedAvg
        if dp_record:
            privacy["user_level"] = dict(dp_record)
        if self.record_tally is not None:
            declined = self.record_tally.update(ok)
            if self.record_tally.latest or declined or self.record_tally.secure_mean is not None:
                privacy["record_level"] = self.record_tally.summary(declined)
        return privacy

    # --- evaluation ---------------------------------------------------------------------
    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        absolute = server_round + self.round_offset
        if absolute % self.eval_every != 0 and server_round != self.num_rounds:
            return []
        if self.eval_clients:
            self._exact(grid, self.eval_clients, "evaluate")
        else:
            self.fraction_evaluate = 1.0  # type: ignore[attr-defined]
            self.min_evaluate_nodes = 1  # type: ignore[attr-defined]
        return super().configure_evaluate(server_round, arrays, config, grid)  # type: ignore[misc]

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        replies = list(replies)
        metrics = super().aggregate_evaluate(server_round, replies)  # type: ignore[misc]
        rec = self._current
        if metrics is not None:
            rec["eval"] = {k: float(v) for k, v in metrics.items()}
            rec["clients_evaluated"] = len(replies)
        rec["round_seconds"] = time.perf_counter() - self._t0
        self.records.append(dict(rec))
        if self.run_dir is not None:  # streamed, so a long run can be watched (tail -f)
            with (self.run_dir / ROUNDS_LOG).open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(rec) + "\n")
        if self.on_round:
            self.on_round(dict(rec))
        return metrics

    def evaluate_initial(self, grid: Grid, arrays: ArrayRecord, timeout: float) -> None:
        """Federated evaluation of the initial model, recorded as round 0 (the baseline)."""
        self._t0 = time.perf_counter()
        self._current = {
            "round": self.round_offset,
            "clients_sampled": 0,
            "bytes_down_per_client": 0,
        }
        messages = self.configure_evaluate(0, arrays, ConfigRecord(), grid)
        replies = grid.send_and_receive(messages=messages, timeout=timeout)
        self.aggregate_evaluate(0, replies)

    # --- helpers ------------------------------------------------------------------------
    def _exact(self, grid: Grid, count: int, phase: str) -> None:
        """Make Flower's fraction sampling pick exactly ``count`` nodes."""
        available = len(list(grid.get_node_ids()))
        fraction = min(1.0, count / max(available, 1))
        setattr(self, f"fraction_{phase}", fraction)
        setattr(self, f"min_{phase}_nodes", min(count, available))

    def _checkpoint(self, arrays: ArrayRecord, absolute_round: int) -> None:
        assert self.run_dir is not None
        state = {f"model/{k}": v.numpy() for k, v in arrays.items()}
        for name in ("m_t", "v_t", "momentum_vector"):  # server-optimizer state, if any
            value = getattr(self, name, None)
            if isinstance(value, list):  # FedAvgM: a list in the order of the model's arrays
                value = dict(zip(arrays.keys(), value, strict=True))
            if isinstance(value, dict):
                state.update({f"{name}/{k}": np.asarray(v) for k, v in value.items()})
        tmp = self.run_dir / f".{CHECKPOINT}.tmp.npz"
        meta: dict[str, Any] = {"round": absolute_round}
        ledger = getattr(self, "user_ledger", None)  # DP-FedAvg: ε must survive a restart
        if isinstance(ledger, PrivacyLedger):
            meta["user_level_ledger"] = ledger.to_dict()
        # the meta rides inside the one atomically replaced file: a crash can never pair
        # this round's model with the previous round's ledger (one release uncounted)
        state[META_KEY] = np.array(json.dumps(meta))
        np.savez(tmp, **state)
        tmp.replace(self.run_dir / CHECKPOINT)
        write_json(self.run_dir / CHECKPOINT_META, meta)  # a readable copy

    def restore_optimizer_state(self, state: dict[str, np.ndarray]) -> None:
        for name in ("m_t", "v_t", "momentum_vector"):
            part = {k.split("/", 1)[1]: v for k, v in state.items() if k.startswith(name + "/")}
            if part and name == "momentum_vector":  # FedAvgM wants it as a list, model order
                order = [k.split("/", 1)[1] for k in state if k.startswith("model/")]
                setattr(self, name, [part[k] for k in order])
            elif part:
                setattr(self, name, part)


def load_checkpoint_meta(path: Path) -> dict[str, Any]:
    """The checkpoint's round and, for a DP run, its user-level privacy ledger (read from
    the checkpoint file itself; checkpoint.json for checkpoints written before it was)."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    file = folder / CHECKPOINT if path.is_dir() else path
    if file.exists():
        with np.load(file) as data:
            if META_KEY in data.files:
                return dict(json.loads(str(data[META_KEY])))
    return dict(json.loads((folder / CHECKPOINT_META).read_text()))


def load_checkpoint(path: Path) -> tuple[ArrayRecord, dict[str, np.ndarray], int]:
    """(shared model, server-optimizer state, round) from a run folder or checkpoint file."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    file = folder / CHECKPOINT if path.is_dir() else path
    if not file.exists():
        raise FileNotFoundError(f"no checkpoint at {file}")

    meta = load_checkpoint_meta(path)
    with np.load(file) as data:
        state = {k: data[k] for k in data.files if k != META_KEY}
    model = {k.split("/", 1)[1]: v for k, v in state.items() if k.startswith("model/")}
    arrays = ArrayRecord({k: Array(np.asarray(v)) for k, v in model.items()})
    return arrays, state, int(meta["round"])


STRATEGY_CLASSES = {
    "fedavg": FedAvg,
    "fedavgm": FedAvgM,
    "fedadam": FedAdam,
    "fedyogi": FedYogi,
    "fedprox": FedProx,
}


def make_strategy(
    config: FederationConfig,
    *,
    num_nodes: int,
    run_dir: Path | None,
    round_offset: int = 0,
    num_rounds: int | None = None,
    on_round: Callable[[dict[str, Any]], None] | None = None,
    user_dp: UserLevelDP | None = None,
    user_ledger: PrivacyLedger | None = None,
    dp_rng: np.random.Generator | None = None,
    secure_report: Callable[[], dict[str, Any]] | None = None,
) -> RoundRecorder:
    """The configured Flower strategy with :class:`RoundRecorder` composed in front.

    With ``user_dp``, :class:`~fedrec.server.dp_fedavg.DPFedAvg` is composed in just before
    ``FedAvg`` in the method resolution order: FedAdam/FedYogi/FedAvgM/FedProx then take
    their step from the clipped, noised average (e.g. RecordedFedAdam → FedAdam → FedOpt →
    DPFedAvg → FedAvg).
    """
    base = STRATEGY_CLASSES[config.strategy]
    bases: tuple[type, ...] = (RoundRecorder, base)
    if user_dp is not None:
        bases = (RoundRecorder, DPFedAvg) if base is FedAvg else (RoundRecorder, base, DPFedAvg)
    name = ("DP" if user_dp is not None else "") + base.__name__
    cls = type(f"Recorded{name}", bases, {})
    common: dict[str, Any] = {
        "fraction_train": config.fraction_train,
        "min_train_nodes": config.min_clients,
        "min_evaluate_nodes": 1,
        "min_available_nodes": num_nodes,
        "evaluate_metrics_aggr_fn": aggregate_user_metrics,
        "weighted_by_key": WEIGHT_KEYS[config.client_weighting],
    }
    if config.strategy in ("fedadam", "fedyogi"):
        common.update(
            eta=config.server_lr,
            beta_1=config.server_beta1,
            beta_2=config.server_beta2,
            tau=config.server_tau,
        )
    elif config.strategy == "fedavgm":
        common.update(server_learning_rate=config.server_lr, server_momentum=config.server_beta1)
    elif config.strategy == "fedprox":
        common.update(proximal_mu=config.proximal_mu)
    strategy: RoundRecorder = cls(**common)
    if user_dp is not None:
        strategy.setup_dp(user_dp, user_ledger or PrivacyLedger(user_dp.accountant), dp_rng)  # type: ignore[attr-defined]
    schedule: Callable[[int], float] | None = None
    if config.strategy in SERVER_LR_ATTRIBUTE:  # horizon: the run's absolute num-rounds

        def schedule(round_: int) -> float:
            return scheduled_lr(
                config.server_lr, config.server_lr_schedule, round_, config.num_rounds
            )

    strategy.setup_recorder(
        clients_per_round=config.clients_per_round,
        eval_every=config.eval_every,
        eval_clients=config.eval_clients,
        num_rounds=num_rounds or config.num_rounds,
        run_dir=run_dir,
        round_offset=round_offset,
        on_round=on_round,
        server_lr=schedule,
        server_lr_attribute=SERVER_LR_ATTRIBUTE.get(config.strategy, ""),
        weight_decay=config.server_weight_decay,
        record_tally=(
            RecordLevelTally(config.local_dp_delta, config.local_epsilon_budget)
            if config.record_level_dp
            else None
        ),
        secure_report=secure_report,
    )
    return strategy
