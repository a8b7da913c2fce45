"""Tests for fedrec.common.fedconfig: parsing Flower's run config into its sections."""

from __future__ import annotations

import tomllib
from dataclasses import fields
from pathlib import Path

import pytest
from builders import federation

from fedrec.common.data.synthetic import SyntheticConfig
from fedrec.common.fedconfig import (
    KEYS,
    RETIRED_KEYS,
    SECTIONS,
    SIMULATION_KEYS,
    STRATEGIES,
    FederationConfig,
    ModelSettings,
    RoundSettings,
    key_of,
)

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def test_round_trip_through_mapping() -> None:
    config = federation(
        data="x.csv", threshold=3.5, seed=7, dim=16, strategy="fedadam", server_lr=0.1,
        proximal_mu=0.5, out_dir="runs/a", audit_log="audit.jsonl",
    )  # fmt: skip
    mapping = config.to_mapping()
    assert set(mapping) == set(KEYS)
    assert mapping["server-lr"] == 0.1 and mapping["out-dir"] == "runs/a"
    assert FederationConfig.from_mapping(mapping) == config
    assert FederationConfig.from_mapping({}) == FederationConfig()


def test_every_key_lands_in_its_section() -> None:
    config = federation(
        data="x.csv", dim=16, num_rounds=7, server_lr=0.1, local_lr=0.25, dp_clip_norm=0.5,
        dp_noise_multiplier=1.0, client_weighting="uniform", local_dp_noise_multiplier=1.0,
        secure_aggregation="secagg+", upload_compression="int8", state_dir="s",
        key_file="k", out_dir="o", synthetic_users=60, audit_log="a.jsonl",
    )  # fmt: skip
    assert (config.data.data, config.model.dim, config.rounds.num_rounds) == ("x.csv", 16, 7)
    assert (config.server.lr, config.local.lr) == (0.1, 0.25)  # server-lr, local-lr
    assert config.user_dp.enabled and config.user_dp.clip_norm == 0.5
    assert config.record_dp.enabled and config.record_dp.noise_multiplier == 1.0
    assert config.secure.enabled and config.secure.mode == "secagg+"
    assert (config.exchange.upload, config.exchange.colr_rank) == ("int8", 0)
    assert (config.storage.state_dir, config.outputs.out_dir) == ("s", "o")
    assert (config.simulation.synthetic_users, config.simulation.audit_log) == (60, "a.jsonl")
    # every key is one field of one section, and the sections are exactly the config's
    assert len(KEYS) == sum(len(fields(kind)) for kind in SECTIONS.values())  # type: ignore[arg-type]
    assert [f.name for f in fields(FederationConfig)] == list(SECTIONS)


def test_a_section_checks_its_own_fields_with_their_keys() -> None:
    with pytest.raises(ValueError, match="dim must be >= 1, got 0"):
        ModelSettings(dim=0)
    with pytest.raises(ValueError, match=r"fraction-train must be in \(0, 1\]"):
        RoundSettings(fraction_train=0.0)
    assert {key_of(f) for f in fields(RoundSettings)} <= set(KEYS)


@pytest.mark.parametrize("key", SIMULATION_KEYS)
def test_a_deployment_refuses_every_simulation_setting_naming_it(key: str) -> None:
    """A deployed ServerApp or device parses with deployed=True: a simulation setting set
    (not its default) is refused with its key; at its default (what a deployed app's run
    config may carry) it passes."""
    default = FederationConfig().to_mapping()[key]
    changed = {
        "synthetic-users": 50, "synthetic-items": 60, "cold-items": 0.2, "target-items": "7",
        "poison-fraction": 0.05, "poison-attack": "a-hum", "poison-knowledge": 0.5,
        "poison-norm": 1.0, "audit-log": "audit.jsonl",
    }[key]  # fmt: skip
    values = {key: changed, **({"target-items": "7"} if key.startswith("poison-") else {})}
    assert FederationConfig.from_mapping(values)  # a simulation takes it
    with pytest.raises(ValueError, match=f"{key} = .* is a simulation setting") as refused:
        FederationConfig.from_mapping(values, deployed=True)
    assert "deployed" in str(refused.value)
    assert FederationConfig.from_mapping({key: default}, deployed=True) == FederationConfig()


def test_a_deployed_app_config_carries_no_simulation_setting() -> None:
    deployed = federation(synthetic_users=50, num_rounds=3).to_mapping(deployed=True)
    assert not set(SIMULATION_KEYS) & set(deployed) and deployed["num-rounds"] == 3
    assert FederationConfig.from_mapping(deployed, deployed=True).rounds.num_rounds == 3


def test_runtime_handles_are_not_settings_but_a_recorded_config_still_reads() -> None:
    """shard-pack and expected-nodes were settings once; config.json of older runs has them."""
    old = {**FederationConfig().to_mapping(), "shard-pack": "/dev/shm/x", "expected-nodes": 943}
    with pytest.raises(ValueError, match="unknown federation setting"):
        FederationConfig.from_mapping(old)
    assert FederationConfig.from_mapping(old, recorded=True) == FederationConfig()
    assert set(RETIRED_KEYS) == {"shard-pack", "expected-nodes"}


def test_from_mapping_coerces_types() -> None:
    config = FederationConfig.from_mapping({"dim": 8.0, "threshold": 4, "seed": "3"})
    assert config.model.dim == 8 and isinstance(config.model.dim, int)
    assert config.data.threshold == 4.0 and isinstance(config.data.threshold, float)
    assert config.data.seed == 3


def test_unknown_key_is_an_error_naming_it() -> None:
    with pytest.raises(ValueError, match="num-round") as err:
        FederationConfig.from_mapping({"num-round": 3})  # typo of num-rounds
    assert "num-rounds" in str(err.value)  # the known keys are listed to help


def test_snake_case_key_is_unknown() -> None:
    with pytest.raises(ValueError, match="num_rounds"):
        FederationConfig.from_mapping({"num_rounds": 3})


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("dim", 0),
        ("num-rounds", 0),
        ("local-batch-size", -1),
        ("synthetic-users", 0),
        ("clients-per-round", -1),
        ("proximal-mu", -0.1),
        ("fraction-train", 0.0),
        ("fraction-train", 1.5),
        ("server-lr", 0.0),
        ("local-lr", -1.0),
        ("server-tau", 0.0),
        ("server-beta1", 1.0),
        ("server-beta2", -0.1),
        ("strategy", "sgd"),
        ("server-lr-schedule", "linear"),
        ("local-optimizer", "rmsprop"),
        ("client-weighting", "by-loss"),
        ("seed", "abc"),
        ("threshold", "high"),
    ],
)
def test_bad_value_names_the_kebab_key(key: str, value: object) -> None:
    with pytest.raises(ValueError, match=key):
        FederationConfig.from_mapping({key: value})


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ({"num-rounds": True}, "num-rounds must be a number, got true"),  # TOML's true
        ({"dp-clip-norm": float("nan")}, "dp-clip-norm must be a finite number"),
        ({"server-lr": float("inf")}, "server-lr must be a finite number"),
        ({"data": 5}, "data must be a string"),
        ({"dp-target-epsilon": 8.0}, "dp-target-epsilon is set but dp-clip-norm is 0"),
        ({"dp-noise-multiplier": 1.0}, "dp-noise-multiplier is set but dp-clip-norm is 0"),
        ({"local-epsilon-budget": 20.0}, "local-epsilon-budget is set but local-dp-noise"),
    ],
)
def test_settings_that_would_silently_do_something_else_are_refused(
    values: dict, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        FederationConfig.from_mapping(values)


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ({"poison-fraction": 0.05}, "name the items the attack promotes"),
        ({"poison-fraction": 1.0, "target-items": "1"}, r"poison-fraction must be in \[0, 1\)"),
        ({"target-items": "tail:0"}, "needs a whole N >= 1"),
        ({"target-items": "tail:five"}, "needs a whole N >= 1"),
        ({"target-items": "12,,5"}, "distinct item ids"),
        ({"target-items": "12,12"}, "distinct item ids"),
        ({"poison-attack": "pipattack"}, "poison-attack must be one of"),
        ({"poison-knowledge": 0.0}, r"poison-knowledge must be in \(0, 1\]"),
        ({"row-norm-bound": -1.0}, "row-norm-bound must be >= 0"),
        ({"cold-items": 1.0}, r"cold-items must be in \[0, 1\)"),
        ({"cold-items": 0.2, "target-items": "tail:5"}, "cold-items with target-items"),
        ({"cold-items": 0.2, "shard-dir": "x", "key-file": "k"}, "carries no cold items"),
        ({"norm-bound": 1.0, "secure-aggregation": "secagg+", "client-weighting": "uniform"},
         "secure aggregation hides"),
        ({"poison-fraction": 0.05, "target-items": "1", "secure-aggregation": "secagg+",
          "client-weighting": "uniform"}, "do not run the SecAgg\\+ protocol"),
        ({"upload-compression": "fp16", "secure-aggregation": "secagg+",
          "client-weighting": "uniform"}, 'upload-compression = "fp16" with secure aggregation'),
    ],
)  # fmt: skip
def test_poisoning_and_bounds_settings_are_checked(values: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        FederationConfig.from_mapping(values)


def test_target_items_by_id_or_drawn_from_the_tail() -> None:
    sim = federation(target_items=" 7, 12").simulation
    assert sim.target_item_ids() == ("7", "12")
    tail = federation(target_items="tail:5").simulation
    assert tail.tail_targets() == 5 and tail.target_item_ids() == ()
    default = FederationConfig().simulation
    assert default.target_item_ids() == () and default.tail_targets() == 0
    # ml-100k's ids are numbers: `--set target-items=242` parses 242 as an int
    parsed = FederationConfig.from_mapping({"target-items": 242})
    assert parsed.simulation.target_item_ids() == ("242",)


def test_the_sections_refuse_a_bool_or_a_non_finite_number_too() -> None:
    with pytest.raises(ValueError, match="dim must be a number"):
        ModelSettings(dim=True)
    with pytest.raises(ValueError, match="max-update-norm must be a finite number"):
        federation(max_update_norm=float("nan"))


def test_int_setting_rejects_a_fraction() -> None:
    with pytest.raises(ValueError, match="num-rounds must be an integer"):
        FederationConfig.from_mapping({"num-rounds": 1.5})
    assert FederationConfig.from_mapping({"num-rounds": 2.0}).rounds.num_rounds == 2


def test_every_strategy_is_accepted() -> None:
    for name in STRATEGIES:
        assert federation(strategy=name).server.strategy == name


def test_pyproject_run_config_matches_the_dataclass_defaults() -> None:
    """[tool.flwr.app.config] is what `flwr run` sends: same keys, same defaults, no drift."""
    with PYPROJECT.open("rb") as fh:
        run_config = tomllib.load(fh)["tool"]["flwr"]["app"]["config"]
    defaults = FederationConfig().to_mapping()
    assert set(run_config) == set(defaults)
    for key, value in run_config.items():
        assert value == defaults[key], key
        assert type(value) is type(defaults[key]), key  # 0 vs 0.0 would change the type
    assert FederationConfig.from_mapping(run_config) == FederationConfig()


def test_a_schedule_needs_a_strategy_with_a_server_step() -> None:
    cosine = federation(strategy="fedadam", server_lr_schedule="cosine")
    assert cosine.server.lr_schedule == "cosine"
    for name in ("fedavg", "fedprox"):
        with pytest.raises(ValueError, match=f"'{name}' has none"):
            federation(strategy=name, server_lr_schedule="cosine")


def test_replace_validates_and_names_unknown_settings() -> None:
    config = FederationConfig()
    assert config.replace(dim=8).model.dim == 8
    with pytest.raises(ValueError, match="dim"):
        config.replace(dim=0)
    with pytest.raises(ValueError, match="unknown federation setting 'num-round'"):
        config.replace(num_round=3)


def test_synthetic_config() -> None:
    config = federation(synthetic_users=60, synthetic_items=400, seed=5)
    assert config.synthetic() == SyntheticConfig(num_users=60, num_items=400, seed=5)


# --- differential privacy settings ---------------------------------------------------------
USER_DP = {"dp-clip-norm": 1.0, "dp-noise-multiplier": 1.0, "client-weighting": "uniform"}


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"dp-noise-multiplier": 0.0}, "dp-target-epsilon"),
        ({"client-weighting": "examples"}, "uniform"),
        ({"clients-per-round": 0}, "clients-per-round >= 1"),
        ({"dp-accountant": "gdp"}, "dp-accountant"),
        ({"dp-delta": 1.0}, "dp-delta"),
        ({"dp-clip-norm": -1.0}, "dp-clip-norm"),
    ],
)
def test_user_level_dp_settings_are_checked(changes: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        FederationConfig.from_mapping({**USER_DP, **changes})


def test_user_level_dp_accepts_a_target_instead_of_z() -> None:
    config = FederationConfig.from_mapping(
        {**USER_DP, "dp-noise-multiplier": 0.0, "dp-target-epsilon": 8.0}
    )
    assert config.user_dp.enabled and not config.record_dp.enabled
    assert not FederationConfig().user_dp.enabled  # off by default


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"local-dp-clip-norm": 0.0}, "local-dp-clip-norm"),
        ({"local-optimizer": "adam"}, "sgd"),
        ({"private-epochs": 1}, "private-epochs must be 0"),
        ({"proximal-mu": 0.1}, "proximal-mu must be 0"),
        ({"local-dp-delta": 0.0}, "local-dp-delta"),
        ({"local-epsilon-budget": -1.0}, "local-epsilon-budget"),
        ({"client-weighting": "examples"}, "uniform"),
    ],
)
def test_record_level_dp_settings_are_checked(changes: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        FederationConfig.from_mapping(
            {"local-dp-noise-multiplier": 1.0, "client-weighting": "uniform", **changes}
        )


def test_local_dp_resumes_with_a_persistent_state_dir() -> None:
    config = FederationConfig.from_mapping({
        "local-dp-noise-multiplier": 1.0, "client-weighting": "uniform", "resume": "runs/a",
        "state-dir": "state", "key-file": "key",
    })  # fmt: skip
    assert config.record_dp.enabled and config.storage.state_dir == "state"


def test_user_level_dp_without_secure_aggregation_is_warned_about() -> None:
    dp = {"dp-clip-norm": 0.5, "dp-noise-multiplier": 1.0, "client-weighting": "uniform"}
    (warning,) = FederationConfig.from_mapping(dp).warnings()
    assert "interaction inference" in warning and "secagg+" in warning
    secure = FederationConfig.from_mapping({**dp, "secure-aggregation": "secagg+"})
    assert secure.warnings() == [] and FederationConfig().warnings() == []


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"colr_rank": -1}, "colr-rank must be >= 0"),
        ({"colr_rank": 64}, r"colr-rank must be in \[0, dim = 64\)"),
        (
            {"colr_rank": 4, "local_dp_noise_multiplier": 1.0, "client_weighting": "uniform"},
            "DP-SGD's per-example",
        ),
        ({"colr_rank": 4, "poison_fraction": 0.1, "target_items": "tail:5"}, "low-rank exchange"),
    ],
)
def test_low_rank_settings_are_checked(changes: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        federation(dim=64, **changes)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"item_ids": "some"}, r"item-ids must be one of \('all', 'none'\)"),
        ({"item_ids": "none", "colr_rank": 8}, "colr-rank factors the item table's update"),
        ({"item_ids": "none", "row_norm_bound": 0.1}, "row-norm-bound bounds each item-table"),
        (
            {"item_ids": "none", "poison_fraction": 0.1, "target_items": "tail:5"},
            "poison-fraction attacks item-table rows",
        ),
    ],
)
def test_settings_that_need_the_item_table_are_refused_without_it(
    changes: dict, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        federation(**changes)


def test_item_ids_from_the_run_config() -> None:
    assert FederationConfig().model.item_id_table
    config = FederationConfig.from_mapping({"item-ids": "none", "target-items": "tail:5"})
    assert not config.model.item_id_table  # exposure is measured without the table too


def test_a_low_rank_run_exchanges_updates() -> None:
    assert federation(colr_rank=4).exchange.sends_updates
    assert not FederationConfig().exchange.sends_updates


def test_cold_items_are_a_data_setting() -> None:
    """A pack or a resumed run cut from another cold set is refused: the fraction is part of
    the data settings (and the resume identity) when set, absent otherwise."""
    assert "cold-items" not in FederationConfig().data_settings()
    assert federation(cold_items=0.2).data_settings()["cold-items"] == 0.2
