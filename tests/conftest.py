"""Fixtures shared by the whole suite."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from fedrec.common.data.catalog import Catalog
from fedrec.common.data.dataset import Interactions
from fedrec.common.data.sources import load_interactions
from fedrec.common.data.split import Split, temporal_leave_one_out
from fedrec.common.data.synthetic import SyntheticConfig


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Tiny tensors: intra-op threads only add contention on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# The small synthetic data set most unit tests share (a module may override any of these).
@pytest.fixture(scope="module")
def data() -> Interactions:
    return load_interactions("synthetic", synthetic=SyntheticConfig(num_users=60, num_items=400))


@pytest.fixture(scope="module")
def split(data: Interactions) -> Split:
    return temporal_leave_one_out(data, seed=0)


@pytest.fixture(scope="module")
def catalog(data: Interactions) -> Catalog:
    return Catalog.of(data)


@pytest.fixture
def server_task(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flower's task identity of a ServerApp (set by Flower when it starts one; creating a
    Message needs it)."""
    from flwr.supercore.task_identity import TaskIdentity

    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)  # the server (SuperLink) node
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
