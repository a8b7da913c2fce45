"""Tests for fedrec.simulations.poisoning: malicious devices promoting target items, and the
norm bounding that stops them (server/robust.py)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from builders import catalog_of, federation, with_catalog

from fedrec.common.data.sources import load_interactions
from fedrec.common.data.split import temporal_leave_one_out
from fedrec.common.fedconfig import FederationConfig
from fedrec.common.metrics import exposure
from fedrec.common.model import ModelConfig, SeedModel, initial_shared_state, load_shared_state
from fedrec.simulations.poisoning import (
    ITEM_TABLE,
    Knowledge,
    malicious_count,
    promote,
    public_knowledge,
    random_features,
    tail_items,
)

CONFIG = with_catalog(federation(synthetic_users=80, synthetic_items=300, dim=16, seed=3))
CATALOG = catalog_of(CONFIG)
TARGETS = np.array([11, 57, 203])


def test_malicious_devices_are_a_fraction_of_the_users_and_at_least_one() -> None:
    of = lambda fraction, users: malicious_count(  # noqa: E731
        federation(poison_fraction=fraction, target_items="a"), users
    )
    assert (of(0.01, 943), of(0.05, 943), of(0.001, 60)) == (9, 47, 1)
    assert malicious_count(federation(), 943) == 0


def test_tail_items_come_from_the_less_popular_half_seeded() -> None:
    data = load_interactions("synthetic", synthetic=CONFIG.synthetic())
    popularity = np.bincount(data.item, minlength=data.num_items)
    chosen = tail_items(data, 5, seed=0)
    index = {item: i for i, item in enumerate(data.item_ids)}
    cutoff = np.sort(popularity)[data.num_items // 2 - 1]
    assert len(set(chosen)) == 5 and all(popularity[index[i]] <= cutoff for i in chosen)
    assert tail_items(data, 5, seed=0) == chosen and tail_items(data, 5, seed=1) != chosen
    with pytest.raises(ValueError, match="has only 150 items"):
        tail_items(data, 151, seed=0)


def test_random_features_are_valid_rows_of_the_schema() -> None:
    from fedrec.common.data.catalog import Catalog

    catalog = Catalog.of(load_interactions("synthetic", synthetic=CONFIG.synthetic()))
    rows = random_features(catalog.user_schema, 50, np.random.default_rng(0))
    assert rows.shape == (50, catalog.user_feature_dim)
    for row in rows[:5]:  # each decodes to attributes and encodes back to itself
        attributes = catalog.user_schema.decode_one(row)
        np.testing.assert_allclose(catalog.user_schema.encode_one(attributes), row, atol=1e-6)


def _exposure_of(shared: dict[str, torch.Tensor], users: int = 200) -> float:
    """The targets' ER@10 among fresh users the attacker never saw (their own rows)."""
    torch.manual_seed(99)
    model = SeedModel(
        ModelConfig(users, CATALOG.num_items, CATALOG.user_feature_dim,
                    CATALOG.item_feature_dim, id_dim=16, dim=16),
        torch.from_numpy(random_features(CATALOG.user_schema, users, np.random.default_rng(5))),
        torch.from_numpy(CATALOG.item_features),
    )  # fmt: skip
    load_shared_state(model, shared)
    with torch.no_grad():
        scores = model.score_all(torch.arange(users)).numpy()
    nothing = np.zeros(CATALOG.num_items, bool)
    return float(np.mean([exposure(row, TARGETS, nothing, (10,))[10] for row in scores]))


@pytest.mark.parametrize("attack", ["a-ra", "a-hum", "fedrecattack"])
def test_an_attack_moves_only_the_target_rows_by_its_norm_and_raises_their_scores(
    attack: str,
) -> None:
    shared = initial_shared_state(CATALOG, 16, seed=0)
    knowledge = public_knowledge(CONFIG.replace(poison_knowledge=0.2))
    uploaded, users = promote(shared, CATALOG, 16, TARGETS, attack=attack, norm=10.0,
                              rng=np.random.default_rng(0), knowledge=knowledge)  # fmt: skip
    delta = {k: (uploaded[k] - shared[k]).numpy() for k in shared}
    moved = np.flatnonzero(np.abs(delta[ITEM_TABLE]).sum(axis=1))
    assert set(moved) == set(TARGETS)
    assert all(not np.any(v) for k, v in delta.items() if k != ITEM_TABLE)
    norm = np.sqrt(sum(np.square(v, dtype=np.float64).sum() for v in delta.values()))
    assert norm == pytest.approx(10.0, rel=1e-5)
    before, after = _exposure_of(shared), _exposure_of(uploaded)
    assert before < 0.05 and after > 0.3, (before, after)  # of the untrained model: 0.38+
    assert users.shape == ((knowledge.users if attack == "fedrecattack" else 64), 16)


def test_the_attackers_public_knowledge_is_its_fraction_of_train_interactions() -> None:
    data = load_interactions("synthetic", synthetic=CONFIG.synthetic())
    split = temporal_leave_one_out(data, seed=CONFIG.data.seed)
    knowledge = public_knowledge(CONFIG.replace(poison_knowledge=0.1))
    train = sum(len(split.train_items_of(u)) for u in range(split.num_users))
    known = sum(len(items) for items in knowledge.items)
    assert 0.07 * train < known < 0.13 * train
    assert public_knowledge(CONFIG.replace(poison_knowledge=0.1)) is knowledge  # cached
    assert Knowledge().users == 0


# --- end to end: the real ServerApp and ClientApps in one process --------------------------
RUN = {"data": "synthetic", "synthetic-users": 150, "synthetic-items": 400, "dim": 16,
       "num-rounds": 20, "clients-per-round": 15, "eval-every": 10, "strategy": "fedavg",
       "client-weighting": "uniform", "target-items": "tail:3"}  # fmt: skip


def _exposure(seed: int, **settings: object) -> tuple[float, dict, int]:
    """(ER@10 of the released model, the run's metrics, malicious replies the server got)."""
    from fedrec.simulations.inprocess import run_inprocess

    logging.getLogger("flwr").setLevel(logging.WARNING)
    metrics, grid = run_inprocess(FederationConfig.from_mapping({**RUN, **settings}), seed=seed)
    malicious = sum(node > 150 for cohort in grid.cohorts for node in cohort)
    return float(metrics["rounds"][-1]["eval"]["er@10"]), metrics, malicious


@pytest.mark.research  # paired seeded runs with exposure bars
def test_ten_percent_malicious_devices_promote_their_targets_and_row_bounds_stop_them() -> None:
    """Plain FedAvg: A-ra from 15 fake devices (10 %) puts the targets in almost every
    user's top 10 within 20 rounds; bounding each item row of an update at 0.1 (honest rows
    move 0.005 at the 99th percentile on ml-100k) brings exposure back to a clean run's."""
    for seed in (0, 1):
        clean, _, _ = _exposure(seed)
        attacked, metrics, sent = _exposure(seed, **{"poison-fraction": 0.1})
        defended, bounded, sent_too = _exposure(
            seed, **{"poison-fraction": 0.1, "row-norm-bound": 0.1}
        )
        assert clean < 0.05 and attacked > 0.6 and defended < 0.05, (clean, attacked, defended)
        assert metrics["nodes"] == 165 and sent > 0  # 150 users and 15 malicious devices
        assert all("rejected" not in r for r in metrics["rounds"])  # validation lets it pass
        assert all(r["eval"]["users"] == 150 for r in metrics["rounds"] if "eval" in r)
        clipped = sum(r.get("bounded", {}).get("rows", 0) for r in bounded["rounds"])
        assert clipped >= 3 * sent_too  # every malicious reply's three target rows


@pytest.mark.slow
def test_fedrec_simulate_runs_malicious_devices_in_the_engine(tmp_path: Path) -> None:
    """The researcher's command: the engine's Ray workers run the routing ClientApp, the
    malicious partitions attack, and the result names the targets' exposure."""
    from typer.testing import CliRunner

    from fedrec.cli import app

    settings = {"synthetic-users": 40, "synthetic-items": 300, "clients-per-round": 20,
                "eval-every": 2, "strategy": "fedavg", "client-weighting": "uniform",
                "target-items": "tail:3", "poison-fraction": 0.1}  # fmt: skip
    args = ["simulate", "--data", "synthetic", "--out", str(tmp_path / "run"),
            "--num-rounds", "4"]  # fmt: skip
    for key, value in settings.items():
        args += ["--set", f"{key}={value}"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "target items' exposure (released model): ER@5" in result.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    config = json.loads((tmp_path / "run" / "config.json").read_text())["config"]
    assert metrics["nodes"] == 44 and len(config["target-items"].split(",")) == 3
    last = metrics["rounds"][-1]
    assert last["eval"]["users"] == 40 and all("rejected" not in r for r in metrics["rounds"])
    # the engine's cohorts are not seeded: the attack's effect is measured on seeded runs
    # (test_ten_percent_malicious_devices_promote_their_targets_and_row_bounds_stop_them)
    assert 0.0 <= last["eval"]["er@5"] <= last["eval"]["er@10"] <= 1.0, last["eval"]
