"""How a device trains in one round: plain local training, or DP-SGD with its own ledger.

:func:`trainer_for` picks the trainer once from the run's config; the ClientApp calls it
without knowing which it got. Both train the one-user model in place and return the scalar
metrics the reply may carry.
"""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING, Protocol

import numpy as np

from fedrec.client.local import LocalTrainConfig, local_train
from fedrec.client.local_model import LocalModel
from fedrec.client.store import StateStore
from fedrec.common import keys
from fedrec.common.data.shard import UserShard
from fedrec.common.fedconfig import FederationConfig
from fedrec.common.privacy import PrivacyLedger

__all__ = [
    "DPSGDTraining",
    "PlainTraining",
    "Trainer",
    "local_train_config",
    "trainer_for",
]

if TYPE_CHECKING:
    from fedrec.client.dp_sgd import RecordDPConfig


class Trainer(Protocol):
    def __call__(
        self,
        model: LocalModel,
        shard: UserShard,
        store: StateStore,
        rng: np.random.Generator,
        item_basis: np.ndarray | None = None,
    ) -> dict[str, float | int]: ...


class PlainTraining:
    """Local training without record-level DP (client/local.py)."""

    def __init__(self, config: LocalTrainConfig) -> None:
        self.config = config

    def __call__(
        self,
        model: LocalModel,
        shard: UserShard,
        store: StateStore,
        rng: np.random.Generator,
        item_basis: np.ndarray | None = None,
    ) -> dict[str, float | int]:
        loss, examples = local_train(model, shard, self.config, rng, item_basis)
        return {keys.TRAIN_LOSS: loss, keys.NUM_EXAMPLES: examples}


class DPSGDTraining:
    """Opacus DP-SGD (client/dp_sgd.py) with the device's ledger carried in its state store.

    The ledger is read before and written after every round, so ε keeps accumulating over
    every round the device ever trained in; when the next round would pass the local
    budget the device declines: it trains nothing, sends the global parameters back
    unchanged (a zero update) and says so in ``budget-exhausted``.
    """

    def __init__(self, config: LocalTrainConfig, dp: RecordDPConfig) -> None:
        self.config = config
        self.dp = dp

    def __call__(
        self,
        model: LocalModel,
        shard: UserShard,
        store: StateStore,
        rng: np.random.Generator,
        item_basis: np.ndarray | None = None,
    ) -> dict[str, float | int]:
        if item_basis is not None:  # FederationConfig refuses the pair; a device says so too
            raise ValueError("a low-rank round (colr-rank) cannot train under local DP-SGD")
        dp_sgd = _dp_sgd_module()  # torch and Opacus load only where DP-SGD runs

        saved = store.load_json(keys.STATE_RECORD_LEDGER)
        ledger = PrivacyLedger.from_dict(saved) if saved else PrivacyLedger(self.dp.accountant)
        # The run's seeded stream is known to whoever knows config.json (the server, say):
        # noise it could regenerate and subtract protects nobody. DP-SGD's sampling and
        # noise come from fresh OS entropy instead, so DP rounds do not reproduce bit for bit.
        secret = np.random.default_rng()
        twin = dp_sgd.seed_model_of(model)
        result = dp_sgd.dp_local_train(twin, shard, self.config, self.dp, ledger, secret)
        dp_sgd.write_back(twin, model)
        store.save_json(keys.STATE_RECORD_LEDGER, ledger.to_dict())
        return {
            keys.TRAIN_LOSS: result.loss,
            keys.NUM_EXAMPLES: result.examples,
            keys.RECORD_EPSILON: result.epsilon,
            keys.BUDGET_EXHAUSTED: int(result.declined),
        }


def _dp_sgd_module() -> ModuleType:
    """fedrec.client.dp_sgd, or an error naming the install extra when torch or Opacus is
    missing (a device installs them only to train under DP-SGD)."""
    try:
        from fedrec.client import dp_sgd
    except ImportError as error:
        raise ImportError(
            "local DP-SGD (local-dp-noise-multiplier > 0) needs torch and Opacus, which this"
            f" device does not have ({error}): pip install 'fedrec[torch]'"
        ) from error
    return dp_sgd


def local_train_config(config: FederationConfig) -> LocalTrainConfig:
    return LocalTrainConfig(
        epochs=config.local.epochs,
        lr=config.local.lr,
        optimizer=config.local.optimizer,
        batch_size=config.local.batch_size,
        negatives=config.local.negatives,
        proximal_mu=config.local.proximal_mu,
        private_epochs=config.local.private_epochs,
        private_lr=config.local.private_lr,
        private_weight_decay=config.local.private_weight_decay,
    )


def trainer_for(config: FederationConfig) -> Trainer:
    """The run's trainer: DP-SGD when ``local-dp-noise-multiplier`` > 0, else plain."""
    local = local_train_config(config)
    if not config.record_dp.enabled:
        return PlainTraining(local)
    dp = _dp_sgd_module().RecordDPConfig(
        noise_multiplier=config.record_dp.noise_multiplier,
        max_grad_norm=config.record_dp.clip_norm,
        delta=config.record_dp.delta,
        epsilon_budget=config.record_dp.epsilon_budget,
        accountant=config.user_dp.accountant,
    )
    return DPSGDTraining(local, dp)
