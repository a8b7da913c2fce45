"""Tests for fedrec.deploy.supernode: the SuperNode a device starts, and when it gives up.

Joining a live SuperLink runs in tests/simulations/test_deploy_e2e.py (real processes)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from builders import catalog_of, federation, with_catalog
from flwr.common.config import parse_config_args

from fedrec.client.data import NODE_KEY_FILE, NODE_PASSPHRASE_FILE, NODE_STORE
from fedrec.client.device import Device
from fedrec.deploy.credentials import make_device_key, make_server_credentials
from fedrec.deploy.supernode import JoinError, JoinSettings, _refusal, join, node_config

CATALOG = catalog_of(with_catalog(federation(synthetic_users=20, synthetic_items=150)))


@pytest.fixture
def settings(tmp_path: Path) -> JoinSettings:
    made = make_server_credentials(tmp_path / "creds")
    key = make_device_key(tmp_path / "auth")
    folder = tmp_path / "my store's folder"  # a space and a quote, as users' paths have
    Device.create(folder, CATALOG, key_file=tmp_path / "store.key")
    return JoinSettings("127.0.0.1:1", made.ca_cert, key.private, folder, tmp_path / "store.key")


def test_flower_reads_the_node_config_back(settings: JoinSettings) -> None:
    parsed = parse_config_args([node_config(settings)])  # Flower's own parser
    assert parsed == {
        NODE_STORE: str(settings.store.resolve()),
        NODE_KEY_FILE: str(settings.key_file.resolve()),  # type: ignore[union-attr]
    }
    passphrase = JoinSettings(
        settings.superlink, settings.root_certificates, settings.auth_key, settings.store,
        passphrase_file=Path("/run/secrets/pass"),
    )  # fmt: skip
    assert parse_config_args([node_config(passphrase)])[NODE_PASSPHRASE_FILE] == "/run/secrets/pass"


def test_the_supernode_dials_with_tls_and_node_auth(settings: JoinSettings) -> None:
    argv = settings.argv()
    assert "--insecure" not in argv
    assert argv[argv.index("--root-certificates") + 1] == str(settings.root_certificates)
    assert argv[argv.index("--auth-supernode-private-key") + 1] == str(settings.auth_key)
    assert argv[argv.index("--host") + 1] == "127.0.0.1"  # its Runtime API stays local


def test_bad_settings_fail_before_anything_starts(settings: JoinSettings, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        JoinSettings("link.example.org", settings.root_certificates, settings.auth_key,
                     settings.store, settings.key_file)  # fmt: skip
    with pytest.raises(FileNotFoundError, match="auth key"):
        JoinSettings("h:1", settings.root_certificates, tmp_path / "nope", settings.store,
                     settings.key_file)  # fmt: skip
    with pytest.raises(ValueError, match="--key-file or --passphrase-file"):
        JoinSettings("h:1", settings.root_certificates, settings.auth_key, settings.store)
    wrong = tmp_path / "wrong.key"
    wrong.write_bytes(bytes(32))
    wrong.chmod(0o600)
    bad = JoinSettings("h:1", settings.root_certificates, settings.auth_key, settings.store, wrong)
    with pytest.raises(JoinError, match=r"the store does not open: .*different key"):
        join(bad, tmp_path / "log")
    assert not (tmp_path / "log").exists()


def test_refusals_no_retry_can_fix_are_told_apart(tmp_path: Path) -> None:
    log = tmp_path / "supernode.log"
    log.write_text("ERROR : Exit Code: 305\n[code: 2004] Failed to activate SuperNode.\n")
    assert _refusal(log, 0) is None  # unregistered or a stale session: retried
    offset = log.stat().st_size
    with log.open("a") as fh:
        fh.write("ERROR : Exit Code: 303\nThe private key for SuperNode authentication ...\n")
    assert _refusal(log, offset) == "node authentication needs TLS"
    assert _refusal(log, log.stat().st_size) is None  # a new attempt reads only its own lines


def test_a_supernode_that_keeps_failing_is_given_up_on(
    settings: JoinSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a stand-in for flower-supernode that fails at once, as one would without its link
    script = tmp_path / "flower-supernode"
    script.write_text(f"#!{sys.executable}\nprint('[code: 2004] Failed to activate')\n"
                      "raise SystemExit(1)\n")  # fmt: skip
    script.chmod(0o755)
    monkeypatch.setattr("fedrec.deploy.supernode.flower_command", lambda name: str(script))
    events: list[str] = []
    with pytest.raises(JoinError, match="refused by the SuperLink 3 times in a row") as raised:
        join(settings, tmp_path / "log", retries=2, backoff=0.01, on_event=events.append)
    assert sum("retry" in e for e in events) == 2
    assert "either its key is not registered" in str(raised.value)
