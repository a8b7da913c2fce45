"""Record-level differential privacy on the device: DP-SGD for one user's local round.

DP-SGD (Abadi et al., 2016, "Deep Learning with Differential Privacy") with Opacus: each
optimizer step Poisson-samples the round's examples, clips every example's gradient to norm
``C``, sums, adds Gaussian noise of std ``z·C`` and averages. One example is one record (a
positive interaction or a sampled negative), so the guarantee is about any single record of
the user's history. The (z, q, steps) of every step goes into the device's
:class:`~fedrec.common.privacy.PrivacyLedger`, which persists across rounds, so ε keeps growing
over every round the device ever trained in; with a local ε budget the device declines a round
that would pass it *before* touching its data.

Two choices differ from plain local training (client/local.py) on purpose:
  * The **whole** one-user model trains under DP-SGD, the private user embedding included:
    a non-private step on the user row would make the shared update, computed with that row,
    depend on the data outside the DP analysis.
  * No compact copy of the touched item rows: DP-SGD must add noise to **every** row of the
    item-embedding table. A row left untouched would come back noise-free, so the set of rows
    that moved would name the items the round trained on, the user's positives among them,
    outside any DP guarantee.

Per-example clipping uses Opacus's ghost clipping (Li et al., 2022, "Large Language Models
Can Be Strong Differentially Private Learners"): per-example gradient *norms* come from the
layers' activations and backprops (for ``nn.Embedding`` by summing each example's backprops
per id, opacus/grad_sample/embedding_norm_sample.py), and the clipped sum from a second,
reweighted backward pass. The dense per-example embedding gradients of Opacus's default
"hooks" mode (batch × items × dim floats: 3.3 GB for a 100k-item catalog at batch 128, dim 64)
are never built, so a step costs a few dense copies of the table (benchmarks/dp_memory.py).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
from opacus import PrivacyEngine
from opacus.grad_sample import AbstractGradSampleModule
from opacus.optimizers import DPOptimizer
from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedrec.client.local import LocalTrainConfig
from fedrec.client.local_model import LocalModel
from fedrec.common.data.shard import UserShard
from fedrec.common.model import SeedModel, shared_parameter_names
from fedrec.common.privacy import ACCOUNTANTS, PrivacyLedger, check_accountant

__all__ = [
    "GRAD_SAMPLE_MODES",
    "DPTrainResult",
    "RecordDPConfig",
    "dp_local_train",
    "planned_use",
    "round_examples",
    "seed_model_of",
    "write_back",
]

GRAD_SAMPLE_MODES = ("ghost", "hooks")  # ghost: norms only (default); hooks: dense, for comparison


@dataclass(frozen=True)
class RecordDPConfig:
    """DP-SGD settings of a device (record level)."""

    noise_multiplier: float  # z: noise std z·C on each step's clipped sum
    max_grad_norm: float  # C: clip of each example's gradient (all parameters together)
    delta: float  # δ at which the device's ledger reports ε
    epsilon_budget: float = 0.0  # decline a round that would push ε past this (0: no limit)
    accountant: str = "rdp"  # rdp | prv (common/privacy.py)

    def __post_init__(self) -> None:
        if not self.noise_multiplier > 0:
            raise ValueError(f"noise_multiplier must be > 0, got {self.noise_multiplier}")
        if not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be > 0, got {self.max_grad_norm}")
        if not 0 < self.delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {self.delta}")
        if not self.epsilon_budget >= 0:
            raise ValueError(
                f"epsilon_budget must be >= 0 (0: no limit), got {self.epsilon_budget}"
            )
        if self.accountant not in ACCOUNTANTS:
            raise ValueError(f"accountant must be one of {ACCOUNTANTS}, got {self.accountant!r}")


@dataclass(frozen=True)
class DPTrainResult:
    loss: float  # mean training loss over the examples processed (0.0 if none)
    examples: int  # examples processed: the sum of the Poisson batch sizes (0 if declined)
    steps: int  # optimizer steps taken, empty batches included (0 if declined)
    epsilon: float  # the ledger's ε at the config's δ after this round
    declined: bool  # the budget stop fired: nothing trained, model and ledger unchanged


@dataclass
class _Private:
    """One round's Opacus-wrapped training objects."""

    engine: PrivacyEngine
    module: AbstractGradSampleModule  # wraps the caller's model (same parameters)
    optimizer: DPOptimizer
    criterion: nn.Module | DPLossFastGradientClipping
    loader: DataLoader
    grad_sample_mode: str


def planned_use(num_examples: int, config: LocalTrainConfig) -> tuple[float, int]:
    """(sample rate q, steps) of a round over ``num_examples``, exactly as Opacus accounts it.

    Opacus's Poisson loader samples at 1 / len(DataLoader) (``ceil(N / batch)`` batches) and
    yields ``int(1 / rate)`` batches per epoch, which float rounding makes one fewer for some
    sizes (93, 99, 105, ...); ``make_private`` then accounts q = 1 / len(Poisson loader), so
    for those sizes the accountant's q (1/92) is slightly above the real rate (1/93): ε is
    overstated a little, never understated.
    """
    if num_examples < 1:
        raise ValueError(f"num_examples must be >= 1, got {num_examples}")
    batches = math.ceil(num_examples / config.batch_size)  # len(DataLoader), last one partial
    per_epoch = int(1 / (1 / batches))  # UniformWithReplacementSampler's steps
    return 1 / per_epoch, config.epochs * per_epoch


def dp_local_train(
    model: SeedModel,
    shard: UserShard,
    config: LocalTrainConfig,
    dp: RecordDPConfig,
    ledger: PrivacyLedger,
    rng: np.random.Generator,
    *,
    grad_sample_mode: str = "ghost",
) -> DPTrainResult:
    """One round of DP-SGD on the user's records; ``model`` and ``ledger`` change in place.

    The round's examples are fixed for the round (the positives plus ``config.negatives``
    leak-free negatives each, drawn from ``rng``) and every step Poisson-samples them, as the
    accountant assumes. Both the sampling and the noise come from torch generators seeded
    from ``rng``: the same ``rng`` state gives the same model, and the global torch RNG is
    left alone. ``grad_sample_mode="hooks"`` (dense per-example gradients) exists only for
    the tests and the memory benchmark.
    """
    _check_round(config, dp, ledger, grad_sample_mode)
    num_examples = len(shard.train_items) * (1 + config.negatives)
    if num_examples == 0:
        return DPTrainResult(0.0, 0, 0, ledger.epsilon(dp.delta), declined=False)
    sample_rate, steps = planned_use(num_examples, config)
    z = dp.noise_multiplier
    if dp.epsilon_budget > 0 and (
        ledger.epsilon_after(dp.delta, z, sample_rate, steps) > dp.epsilon_budget
    ):
        return DPTrainResult(0.0, 0, 0, ledger.epsilon(dp.delta), declined=True)

    items, labels = round_examples(shard, config, rng)
    sampling, noise = (torch.Generator().manual_seed(int(s)) for s in rng.integers(2**63, size=2))
    loader = DataLoader(
        TensorDataset(torch.from_numpy(items), torch.from_numpy(labels)),
        batch_size=config.batch_size,
        generator=sampling,  # DPDataLoader's Poisson sampler inherits it
    )
    expected_steps = ledger.steps + steps
    with _quiet_opacus():
        private = _make_private(model, loader, config, dp, ledger, noise, grad_sample_mode)
        total, seen, taken = 0.0, 0, 0
        try:
            model.train()
            for _ in range(config.epochs):
                for batch_items, batch_labels in private.loader:  # (B,), (B,); B may be 0
                    total += _step(private, batch_items, batch_labels)
                    seen += len(batch_items)
                    taken += 1
        finally:  # steps taken are spent even if the round fails: record them regardless
            ledger.load_state_dict(private.engine.accountant.state_dict())
            _release(private, model)
    assert taken == steps and ledger.steps == expected_steps, (taken, steps, ledger.history)
    return DPTrainResult(
        total / max(seen, 1), seen, taken, ledger.epsilon(dp.delta), declined=False
    )


def seed_model_of(model: LocalModel) -> SeedModel:
    """The torch twin of a device's NumPy model (the same names and values, copied), for
    Opacus: the one place a device builds a torch model."""
    with torch.random.fork_rng(devices=[]):  # nothing to initialise: spare the RNG
        seed = SeedModel(
            model.config,
            torch.from_numpy(model.user_features),
            torch.from_numpy(model.item_features),
            initialize=False,
        )
    params = dict(seed.named_parameters())
    with torch.no_grad():
        for name, value in model.params.items():
            params[name].copy_(torch.from_numpy(value))
    return seed


def write_back(seed: SeedModel, model: LocalModel) -> None:
    """Copy the trained torch twin's parameters into the device's NumPy model."""
    for name, value in seed.named_parameters():
        model.params[name][...] = value.detach().numpy()


def round_examples(
    shard: UserShard, config: LocalTrainConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """The round's dataset: (items (N,) int64, labels (N,) float32), positives first (not
    shuffled: every step Poisson-samples it)."""
    examples = shard.examples(config.negatives, rng, shuffle=False)
    return examples.items, examples.labels


def _check_round(
    config: LocalTrainConfig, dp: RecordDPConfig, ledger: PrivacyLedger, grad_sample_mode: str
) -> None:
    check_accountant(ledger, dp.accountant, "the device's ledger")
    if grad_sample_mode not in GRAD_SAMPLE_MODES:
        raise ValueError(
            f"grad_sample_mode must be one of {GRAD_SAMPLE_MODES}, got {grad_sample_mode!r}"
        )
    if config.optimizer != "sgd":
        raise ValueError(f'DP-SGD needs optimizer = "sgd", got {config.optimizer!r}')
    if config.private_epochs or config.proximal_mu:
        raise ValueError(
            "private_epochs and proximal_mu must be 0 under DP-SGD: every step that reads the"
            " user's data must be a clipped, noised step of the whole model"
        )


def _make_private(
    model: SeedModel,
    loader: DataLoader,
    config: LocalTrainConfig,
    dp: RecordDPConfig,
    ledger: PrivacyLedger,
    noise: torch.Generator,
    grad_sample_mode: str,
) -> _Private:
    """Wrap model, SGD and loader with a PrivacyEngine whose accountant resumes ``ledger``."""
    params = dict(model.named_parameters())
    optimizer = torch.optim.SGD(
        [
            {"params": [params[n] for n in shared_parameter_names(model)], "lr": config.lr},
            {"params": [model.user_embedding.weight], "lr": config.lr},
        ]
    )
    engine = PrivacyEngine(accountant=dp.accountant)
    engine.accountant.load_state_dict(ledger.state_dict())  # its hook steps on from the ledger
    wrapped = engine.make_private(
        module=model,
        optimizer=optimizer,
        criterion=nn.BCEWithLogitsLoss(),  # mean reduction, as Opacus's loss_reduction
        data_loader=loader,
        noise_multiplier=dp.noise_multiplier,
        max_grad_norm=dp.max_grad_norm,
        poisson_sampling=True,
        noise_generator=noise,
        grad_sample_mode=grad_sample_mode,
    )
    if grad_sample_mode == "ghost":
        module, dp_optimizer, criterion, dp_loader = wrapped
    else:
        (module, dp_optimizer, dp_loader), criterion = wrapped, nn.BCEWithLogitsLoss()
    # Opacus averages over int(N·q), which float rounding turns into 0 (then inf gradients)
    # e.g. for N = 49 at batch 1; the expected Poisson batch size is exactly N / len(loader).
    dp_optimizer.expected_batch_size = len(cast(TensorDataset, loader.dataset)) / len(loader)
    return _Private(engine, module, dp_optimizer, criterion, dp_loader, grad_sample_mode)


def _step(private: _Private, items: torch.Tensor, labels: torch.Tensor) -> float:
    """One DP-SGD step on a Poisson batch; returns the batch's summed loss (before the step).

    An empty batch is still a step: Opacus's accountant counts it and the noise is added to
    a zero clipped sum. Hooks mode does that by itself; ghost mode's embedding norm sampler
    fails to reshape an empty batch, so the zero clipped sum is set directly: the same
    noise-only step hooks mode takes (tests/client/test_dp_sgd.py compares the two).
    """
    private.optimizer.zero_grad(set_to_none=True)
    if len(items) == 0 and private.grad_sample_mode == "ghost":
        for p in private.optimizer.params:
            p.grad = torch.zeros_like(p)
        private.optimizer.step()
        return 0.0
    users = torch.zeros(len(items), dtype=torch.long)  # every layer sees the batch dimension
    logits = private.module(users, items)  # (B,)
    loss = private.criterion(logits, labels)
    loss.backward()  # ghost: norms pass, then the clipped-sum pass, into p.grad
    private.optimizer.step()  # + N(0, z²C²) on every coordinate, / expected batch size
    per_example = nn.functional.binary_cross_entropy_with_logits(
        logits.detach(), labels, reduction="sum"
    )
    return float(per_example)


def _release(private: _Private, model: SeedModel) -> None:
    """Remove Opacus's hooks and per-parameter attributes; drop the round's dense grads."""
    # private in Opacus 1.6, and its only way to unhook the model it wrapped: the device's
    # model lives on after the round (tests/client/test_dp_sgd.py fails if hooks remain)
    private.module._close()
    for p in model.parameters():
        for attr in ("summed_grad", "_norm_sample", "grad_sample"):
            if hasattr(p, attr):
                delattr(p, attr)
        p.grad = None


@contextmanager
def _quiet_opacus() -> Iterator[None]:
    """Silence two known, harmless Opacus warnings (and only those)."""
    with warnings.catch_warnings():
        # the generators are seeded from ``rng``: reproducible in tests; the ClientApp seeds
        # ``rng`` from OS entropy (client/trainers.py) so nobody can regenerate the noise
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        # the embeddings' inputs are integer ids, so the full backward hooks see no input grad
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        yield
