"""The centralized reference (simulations/central.py): it trains on the threads it is given
and leaves the process's torch threads as they were."""

from __future__ import annotations

import pytest
import torch

from fedrec.common.data.sources import load_interactions
from fedrec.common.data.split import temporal_leave_one_out
from fedrec.common.fedconfig import FederationConfig
from fedrec.simulations.central import CentralConfig, train_central


def test_training_uses_the_configured_threads_and_restores_them() -> None:
    data = load_interactions("synthetic", synthetic=FederationConfig(synthetic_users=60,
                             synthetic_items=300).synthetic())  # fmt: skip
    split = temporal_leave_one_out(data)
    before = torch.get_num_threads()
    threads = 2 if before == 1 else 1  # not what the process has: the setting must act
    seen = []
    config = CentralConfig(epochs=1, dim=8, threads=threads)
    train_central(config, data, split, on_epoch=lambda _: seen.append(torch.get_num_threads()))
    assert seen == [threads] and torch.get_num_threads() == before


def test_threads_must_be_positive() -> None:
    with pytest.raises(ValueError, match="threads"):
        CentralConfig(threads=0)
