"""The server side of a simulation reads the published catalog and nothing of the data.

Through Flower's simulation engine: the ServerApp is given a catalog file and a data path that
does not exist; the ClientApps (the devices) have the data. Any read of interactions or user
features on the server's side would fail, and the run completes.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
from builders import catalog_of, federation, with_catalog

from fedrec.client.app import make_client_app
from fedrec.server.app import make_server_app
from fedrec.server.runs import CONFIG_FILE, METRICS_FILE
from fedrec.simulations.engine import ChunkedGrid, install_fast_polling

pytestmark = pytest.mark.slow

USERS = 20


def test_a_server_with_only_the_catalog_runs_a_federation(tmp_path: Path) -> None:
    from flwr.simulation import run_simulation

    devices = with_catalog(
        federation(
            synthetic_users=USERS, synthetic_items=500, dim=8, num_rounds=2,
            clients_per_round=5, eval_every=2, strategy="fedadam", server_lr=0.05,
        )
    )  # fmt: skip
    server = devices.replace(data=str(tmp_path / "no-such-data"), out_dir=str(tmp_path / "run"))
    install_fast_polling()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # run_simulation's own notice
        run_simulation(
            server_app=make_server_app(server, wrap_grid=ChunkedGrid),
            client_app=make_client_app(devices),
            num_supernodes=USERS,
            backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                            "init_args": {"num_cpus": 2, "include_dashboard": False}},
        )  # fmt: skip
    metrics = json.loads((tmp_path / "run" / METRICS_FILE).read_text())
    assert [r["clients_replied"] for r in metrics["rounds"][1:]] == [5, 5]
    assert metrics["final"]["users"] == USERS
    header = json.loads((tmp_path / "run" / CONFIG_FILE).read_text())
    assert header["catalog_sha256"] == catalog_of(devices).hash
    assert header["config"]["data"] == str(tmp_path / "no-such-data")
