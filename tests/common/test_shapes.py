"""Tests for fedrec.common.shapes: the seed model's layout without torch."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from fedrec.common.data.catalog import Catalog
from fedrec.common.model import SeedModel, device_model, shared_parameter_names
from fedrec.common.shapes import ModelConfig, parameter_shapes, shared_shapes


def _torch_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):  # no memory, no initialisation
        model = SeedModel(
            config,
            torch.empty(config.num_users, config.user_feature_dim),
            torch.empty(config.num_items, config.item_feature_dim),
            initialize=False,
        )
    return {name: tuple(p.shape) for name, p in model.named_parameters()}


@pytest.mark.parametrize("item_ids", [True, False])
@pytest.mark.parametrize(("fu", "fi", "id_dim", "dim"), [(0, 3, 8, 8), (5, 0, 4, 6), (2, 7, 16, 9)])
def test_parameter_shapes_are_the_torch_models_in_its_order(
    item_ids: bool, fu: int, fi: int, id_dim: int, dim: int
) -> None:
    if not item_ids and fi == 0:
        pytest.skip("a model without item ids needs item features")
    config = ModelConfig(1, 11, fu, fi, id_dim=id_dim, dim=dim, item_ids=item_ids)
    assert list(parameter_shapes(config).items()) == list(_torch_shapes(config).items())


@pytest.mark.parametrize("item_ids", [True, False])
def test_shared_shapes_are_the_device_models_shared_group(catalog: Catalog, item_ids: bool) -> None:
    model = device_model(catalog, 16, torch.zeros(catalog.user_feature_dim).numpy(),
                         initialize=False, item_ids=item_ids)  # fmt: skip
    params = dict(model.named_parameters())
    want = [(n, tuple(params[n].shape)) for n in shared_parameter_names(model)]
    assert list(shared_shapes(catalog, 16, item_ids=item_ids).items()) == want


def test_the_shapes_module_imports_no_torch() -> None:
    code = "import sys, fedrec.common.shapes; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
