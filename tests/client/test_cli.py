"""User story (app developer): a device's store from the command line, with no server."""

from __future__ import annotations

import json
from pathlib import Path

from builders import catalog_of, federation, server_message, with_catalog
from flwr.app import ArrayRecord, Context, RecordDict
from typer.testing import CliRunner

from fedrec.cli import app
from fedrec.client.app import make_client_app
from fedrec.common.data.catalog import save_catalog
from fedrec.common.model import initial_shared_state

CONFIG = with_catalog(federation(synthetic_users=60, synthetic_items=400, dim=8))


def _run(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def test_a_device_from_the_command_line(tmp_path: Path) -> None:
    store, key = str(tmp_path / "store"), str(tmp_path / "device.key")
    opts = ["--store", store, "--key-file", key]
    _run("client", "init", *opts, "--catalog", CONFIG.data.catalog, "--attribute", "age=30")
    history = tmp_path / "history.csv"
    history.write_text("item,event,value,timestamp\n5,view,,100\n8,rating,4,200\n13,click,,300\n"
                       "21,view,,400\n34,view,,500\n")  # fmt: skip
    assert "5 interactions imported" in _run("client", "import", str(history), *opts,
                                             "--hold-out", "2")  # fmt: skip
    _run("client", "record", "99", *opts, "--event", "rating", "--value", "5")
    refused = CliRunner().invoke(app, ["client", "recommend", *opts])
    assert refused.exit_code == 2 and "no global model on this device yet" in refused.output
    # one round of the ClientApp over the store, as a SuperNode would run it
    catalog = catalog_of(CONFIG)
    initial = ArrayRecord(initial_shared_state(catalog, CONFIG.model.dim, 0))
    context = Context(run_id=1, node_id=3, node_config={"store": store, "key-file": key},
                      state=RecordDict(), run_config={})  # fmt: skip
    reply = make_client_app(CONFIG)(
        server_message("train", initial, 3, 1, catalog=catalog), context
    )
    assert not reply.has_error(), reply.error
    listed = json.loads(_run("client", "recommend", *opts, "-k", "5", "--json", "--explain"))
    items = [r["item"] for r in listed["items"]]
    assert len(items) == 5 and not set(items) & {"5", "8", "13", "21", "34", "99"}
    reasons = [r["because"] for r in listed["items"]]  # past items that lift it (influence)
    assert all(len(b) <= 3 and set(b) <= {"5", "8", "13", "21", "34", "99"} for b in reasons)
    assert any(reasons)
    status = json.loads(_run("client", "status", *opts, "--json"))
    assert status["rounds_joined"] == 1 and status["model_round"] == 1
    assert status["interactions"] == 6
    assert "1 interactions removed" in _run("client", "forget", "99", *opts)
    smaller = save_catalog(catalog.prefix(20), tmp_path / "smaller.npz")  # lacks item 21, 34
    lacking = CliRunner().invoke(app, ["client", "install-catalog", str(smaller), *opts])
    assert lacking.exit_code == 2 and "lacks items of this history" in lacking.output
    assert f"catalog {catalog.hash[:12]} installed" in _run(
        "client", "install-catalog", CONFIG.data.catalog, *opts
    )
    bad = CliRunner().invoke(app, ["client", "record", "no-such-item", *opts])
    assert bad.exit_code == 2 and "is not in the catalog" in bad.output
    assert CliRunner().invoke(app, ["client", "erase", *opts]).exit_code == 2  # needs --yes
    _run("client", "erase", *opts, "--yes")
    assert not Path(store).exists() and not Path(key).exists()
