"""Tests for fedrec.server.app: the server side of a run needs the published catalog only."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from builders import StaticGrid, catalog_of, federation, with_catalog

from fedrec.client.app import make_client_app
from fedrec.common.bundle import build_bundle, load_bundle
from fedrec.common.data.catalog import load_catalog
from fedrec.server import runs
from fedrec.server.app import ServerRandomness, run_federation
from fedrec.simulations.inprocess import InProcessGrid, seeded_task

USERS = 30
CLIENT = with_catalog(
    federation(
        synthetic_users=USERS, synthetic_items=500, dim=8, num_rounds=2, clients_per_round=5,
        eval_every=2, strategy="fedadam", server_lr=0.05,
    )
)  # fmt: skip


def test_the_server_reads_the_catalog_and_nothing_of_the_data(tmp_path: Path) -> None:
    """The devices have their data; the server gets a data path that does not exist and a
    catalog file: any read of interactions or user features on its side would fail."""
    server = CLIENT.replace(data=str(tmp_path / "no-such-data"), out_dir=str(tmp_path / "run"))
    grid = InProcessGrid(make_client_app(CLIENT), USERS)
    with seeded_task(1):
        metrics = run_federation(grid, server, randomness=ServerRandomness.seeded(1))
    assert metrics["final"]["users"] == USERS and metrics["best_round"] == 2
    assert [r["clients_replied"] for r in metrics["rounds"][1:]] == [5, 5]
    header = json.loads((tmp_path / "run" / runs.CONFIG_FILE).read_text())
    assert header["catalog_sha256"] == catalog_of(CLIENT).hash
    assert header["strategy"] == "PlainAggregation → FedAdam"  # compose().describe()
    # the released model and its inference bundle, built on the same catalog and round
    bundle = load_bundle(tmp_path / "run" / runs.INFERENCE_BUNDLE)
    with np.load(tmp_path / "run" / runs.FINAL_MODEL) as saved:
        expected = build_bundle(
            dict(saved), catalog_of(CLIENT).item_features, bundle.catalog_sha256
        )
    assert (bundle.catalog_sha256, bundle.model_round) == (catalog_of(CLIENT).hash, 2)
    np.testing.assert_array_equal(bundle.item_codes, expected.item_codes)


def test_every_model_sent_names_its_catalog() -> None:
    app, sent = make_client_app(CLIENT), []

    def device(message, context):  # type: ignore[no-untyped-def]  # what each device received
        sent.append(message)
        return app(message, context)

    grid = InProcessGrid(device, USERS)  # type: ignore[arg-type]
    with seeded_task(1):
        run_federation(grid, CLIENT, randomness=ServerRandomness.seeded(1))
    with_model = [m for m in sent if "arrays" in m.content]
    assert len(with_model) == 2 * 5 + 2 * USERS  # 2 rounds of 5, evaluation at 0 and 2
    assert {m.content["config"]["catalog-hash"] for m in with_model} == {catalog_of(CLIENT).hash}


def test_a_server_without_a_catalog_says_how_to_build_one(tmp_path: Path) -> None:
    """A deployment needs the catalog its devices hold: it never makes one up, not even for
    the default synthetic data (a simulation of it may: the next test)."""
    grid = InProcessGrid(make_client_app(CLIENT), USERS)
    with pytest.raises(ValueError, match="fedrec catalog build --data PATH"):
        run_federation(grid, CLIENT.replace(catalog=""))
    with pytest.raises(ValueError, match="fedrec catalog build --data PATH"):
        run_federation(
            grid, CLIENT.replace(catalog="", data=str(tmp_path / "r.csv")), synthetic_catalog=True
        )


def test_targets_are_named_by_id_and_listed_in_the_catalog() -> None:
    grid = InProcessGrid(make_client_app(CLIENT), USERS)
    with pytest.raises(ValueError, match="drawn from the data by the simulation runner"):
        run_federation(grid, CLIENT.replace(target_items="tail:3"))
    with pytest.raises(ValueError, match="no-such-item"):
        run_federation(grid, CLIENT.replace(target_items="no-such-item"))


def test_on_synthetic_data_without_a_catalog_both_ends_build_the_generators(
    tmp_path: Path,
) -> None:
    """`flwr run .` with its defaults: no catalog is set, data is the synthetic generator
    (public: no user's data). The server builds its catalog (and writes it to the run
    folder), each simulated node builds the same one: the round's hash matches."""
    config = CLIENT.replace(catalog="", num_rounds=1, out_dir=str(tmp_path / "run"))
    grid = InProcessGrid(make_client_app(config), USERS)
    with seeded_task(1):
        metrics = run_federation(
            grid, config, randomness=ServerRandomness.seeded(1), synthetic_catalog=True
        )
    assert [r["clients_replied"] for r in metrics["rounds"][1:]] == [5]  # nobody refused
    written = load_catalog(tmp_path / "run" / runs.CATALOG_FILE)
    assert written.hash == catalog_of(CLIENT).hash  # the generator's catalog, as built before


def test_metrics_json_is_written_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    written: list[str] = []
    original = runs.write_json

    def counting(path, payload):  # type: ignore[no-untyped-def]
        written.append(Path(path).name)
        return original(path, payload)

    monkeypatch.setattr("fedrec.server.app.write_json", counting)
    from fedrec.simulations.inprocess import run_inprocess

    metrics, _ = run_inprocess(CLIENT.replace(out_dir=str(tmp_path / "run")), seed=2)
    assert written.count(runs.METRICS_FILE) == 1
    stored = json.loads((tmp_path / "run" / runs.METRICS_FILE).read_text())
    assert stored["reproducible"]["server_seed"] == 2 == metrics["reproducible"]["server_seed"]
    assert np.isclose(stored["final"]["hr@10"], metrics["final"]["hr@10"])


def test_resuming_on_another_catalog_or_model_is_refused(tmp_path: Path) -> None:
    run = tmp_path / "run"
    grid = InProcessGrid(make_client_app(CLIENT), USERS)
    with seeded_task(1):
        run_federation(
            grid, CLIENT.replace(out_dir=str(run)), randomness=ServerRandomness.seeded(1)
        )
    meta = json.loads((run / runs.CHECKPOINT_META).read_text())
    assert meta["catalog_sha256"] == catalog_of(CLIENT).hash and meta["dim"] == 8
    other = with_catalog(CLIENT.replace(synthetic_items=501))
    with pytest.raises(ValueError, match=r"was trained on catalog .* resume with the catalog"):
        run_federation(grid, other.replace(resume=str(run), num_rounds=4))
    with pytest.raises(ValueError, match="another experiment: dim 8 in the checkpoint, 16 now"):
        run_federation(grid, CLIENT.replace(resume=str(run), num_rounds=4, dim=16))
    with pytest.raises(ValueError, match="seed 0 in the checkpoint, 3 now"):
        run_federation(grid, CLIENT.replace(resume=str(run), num_rounds=4, seed=3))
    assert meta["seed"] == 0 and meta["synthetic-users"] == USERS


def test_a_round_every_device_refuses_stops_before_dp_spends_epsilon() -> None:
    """The devices hold another catalog: under DP a noise-only round would still cost ε."""
    devices = with_catalog(CLIENT.replace(synthetic_items=501))  # their catalog differs
    server = CLIENT.replace(
        client_weighting="uniform", dp_clip_norm=0.5, dp_noise_multiplier=1.0, eval_every=5
    )
    grid = InProcessGrid(make_client_app(devices), USERS)
    with (
        seeded_task(1),
        pytest.raises(RuntimeError, match=r"every one of the .* refused the round"),
    ):
        run_federation(grid, server, randomness=ServerRandomness.seeded(1))


def test_a_resume_that_switches_cold_items_on_or_off_is_refused(tmp_path: Path) -> None:
    """Which items trained is part of the experiment: a checkpoint without cold items would
    have trained the items a cold run holds out, and the other way round."""
    grid = InProcessGrid(make_client_app(CLIENT), USERS)
    for cold, then in ((0.0, 0.2), (0.2, 0.0)):
        run = tmp_path / f"run-{cold}"
        first = CLIENT.replace(out_dir=str(run), cold_items=cold)
        with seeded_task(1):
            run_federation(InProcessGrid(make_client_app(first), USERS), first,
                           randomness=ServerRandomness.seeded(1))  # fmt: skip
        resumed = CLIENT.replace(resume=str(run), num_rounds=4, cold_items=then)
        with pytest.raises(ValueError, match=f"cold-items {cold} in the checkpoint, {then} now"):
            run_federation(grid, resumed)


def test_a_federation_without_item_ids_sends_no_table_and_resumes_only_as_one(
    tmp_path: Path,
) -> None:
    """item-ids = "none" through the real round loop: the released model, its bundle and
    every message have no item table (the synthetic catalog's 500 × 8 float32 table: 16,000
    bytes less each way, and its record entry: measured 16,405 per message), and a resume
    that would add or drop the table is refused."""
    run, plain = tmp_path / "run", tmp_path / "plain"
    small = CLIENT.replace(item_ids="none", out_dir=str(run))
    results = {}
    for item_ids, config in (("none", small), ("all", CLIENT.replace(out_dir=str(plain)))):
        with seeded_task(1):
            results[item_ids] = run_federation(
                InProcessGrid(make_client_app(config), USERS), config,
                randomness=ServerRandomness.seeded(1),
            )  # fmt: skip
    with np.load(run / runs.FINAL_MODEL) as saved:
        assert "item_embedding.weight" not in saved.files
    assert load_bundle(run / runs.INFERENCE_BUNDLE).num_items == 500
    traffic = {k: r["traffic"]["train"] for k, r in results.items()}
    for way in ("down", "up"):  # 2 rounds of 5 devices
        saved = (traffic["all"][way] - traffic["none"][way]) / (2 * 5)
        assert 500 * 8 * 4 < saved < 500 * 8 * 4 + 600, (way, saved)
    assert results["none"]["final"]["users"] == USERS
    with pytest.raises(ValueError, match="item-ids none in the checkpoint, all now"):
        run_federation(InProcessGrid(make_client_app(CLIENT), USERS),
                       CLIENT.replace(resume=str(run), num_rounds=4))  # fmt: skip
    with pytest.raises(ValueError, match="item-ids all in the checkpoint, none now"):
        run_federation(InProcessGrid(make_client_app(small), USERS),
                       small.replace(resume=str(plain), num_rounds=4, out_dir=""))  # fmt: skip


@pytest.mark.parametrize(("key", "value"), [("poison-fraction", 0.1), ("synthetic-users", 50)])
def test_a_deployed_server_app_refuses_a_simulation_setting_naming_it(
    key: str, value: object
) -> None:
    """The ServerApp as `flwr run` starts it on a deployment (any grid but the simulation
    runtime's in-memory one): a simulation setting set is refused by name, in one line."""
    from flwr.app import Context, RecordDict

    from fedrec.server.app import make_server_app
    from fedrec.server.errors import RunError

    run_config = {key: value, "target-items": "1"}  # poisoning names its targets
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                      run_config=run_config)  # type: ignore[arg-type]  # fmt: skip
    with pytest.raises(RunError, match=f"{key} = .* is a simulation setting"):
        make_server_app()(StaticGrid([1, 2, 3]), context)  # type: ignore[arg-type]
