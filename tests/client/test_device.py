"""Tests for fedrec.client.device: the device SDK and the ClientApp over a device store."""

from __future__ import annotations

import shutil
import stat
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
from builders import catalog_of, federation, server_message, with_catalog
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, RecordDict

from fedrec.client.app import make_client_app
from fedrec.client.device import Device, DeviceError, Interaction
from fedrec.client.secure_store import RolledBackError, WrongKeyError
from fedrec.common import keys
from fedrec.common.crypto import read_key_file
from fedrec.common.model import initial_shared_state

CONFIG = with_catalog(federation(synthetic_users=60, synthetic_items=400, dim=8, seed=0))
CATALOG = catalog_of(CONFIG)
ITEMS = CATALOG.item_ids


def _device(tmp_path: Path, history: int = 12) -> Device:
    device = Device.create(tmp_path / "store", CATALOG, key_file=tmp_path / "device.key",
                           user_features={"age": "34", "gender": "F"})  # fmt: skip
    rows = [Interaction(ITEMS[i], "view", None, 1000.0 + i) for i in range(history)]
    device.import_history(rows, hold_out=2)
    return device


def _context(tmp_path: Path, node_id: int = 77) -> Context:
    """What a SuperNode's ClientApp gets in a new run: an empty context.state."""
    node_config = {"store": str(tmp_path / "store"), "key-file": str(tmp_path / "device.key")}
    return Context(run_id=node_id, node_id=node_id, node_config=node_config,
                   state=RecordDict(), run_config={})  # fmt: skip


def _round(app, tmp_path: Path, kind: str, arrays: ArrayRecord, server_round: int):  # type: ignore[no-untyped-def]
    reply = app(server_message(kind, arrays, 77, server_round, catalog=CATALOG), _context(tmp_path))
    assert not reply.has_error(), reply.error
    return reply


@pytest.fixture
def initial() -> ArrayRecord:
    return ArrayRecord(initial_shared_state(CATALOG, CONFIG.model.dim, CONFIG.data.seed))


def test_create_seals_every_file_and_opens_only_with_its_key(tmp_path: Path) -> None:
    device = _device(tmp_path)
    files = sorted(p.name for p in (tmp_path / "store").iterdir())
    assert files == [
        "fedrec.catalog.sealed",
        "fedrec.device.sealed",
        "fedrec.history.sealed",
        "fedrec.versions.sealed",  # the store's version record (rollback detection)
    ]
    for path in (tmp_path / "store").iterdir():
        raw = path.read_bytes()
        assert raw.startswith(b"FEDRECSF")  # every file is a sealed file
        for plaintext in (b"held_out", b"attributes", b"gender", b"candidate_seed", b"npz"):
            assert plaintext not in raw  # nothing of the objects is readable
    assert stat.S_IMODE((tmp_path / "device.key").stat().st_mode) == 0o600
    assert len(read_key_file(tmp_path / "device.key")) == 32
    other = tmp_path / "other.key"
    other.write_bytes(b"x" * 32)
    other.chmod(0o600)
    with pytest.raises(WrongKeyError):
        Device.open(tmp_path / "store", key_file=other).history()
    reopened = Device.open(tmp_path / "store", key_file=tmp_path / "device.key")
    assert reopened.name == device.name and len(reopened.history()) == 12
    with pytest.raises(DeviceError, match="not empty"):
        Device.create(tmp_path / "store", CATALOG, key_file=tmp_path / "device.key")
    with pytest.raises(DeviceError, match="outside the store"):
        Device.create(tmp_path / "s2", CATALOG, key_file=tmp_path / "s2" / "k")


def test_a_passphrase_store(tmp_path: Path) -> None:
    device = Device.create(tmp_path / "store", CATALOG, passphrase="correct horse")
    device.record(ITEMS[5], "click")
    assert [
        i.item for i in Device.open(tmp_path / "store", passphrase="correct horse").history()
    ] == [ITEMS[5]]
    with pytest.raises(WrongKeyError):
        Device.open(tmp_path / "store", passphrase="wrong horse").history()


def test_feedback_is_checked(tmp_path: Path) -> None:
    device = _device(tmp_path)
    with pytest.raises(DeviceError, match="not in the catalog"):
        device.record("no-such-item")
    with pytest.raises(DeviceError, match="event must be one of"):
        device.record(ITEMS[0], "like")
    with pytest.raises(DeviceError, match="a rating needs a value"):
        device.record(ITEMS[0], "rating")
    with pytest.raises(DeviceError, match="finite"):
        device.record(ITEMS[0], "rating", value=float("nan"))
    with pytest.raises(ValueError, match="not in the catalog's schema"):
        Device.create(tmp_path / "s3", CATALOG, key_file=tmp_path / "k3",
                      user_features={"shoe-size": "44"})  # fmt: skip
    assert len(device.history()) == 12  # nothing refused was stored


def test_the_shard_holds_out_the_imported_last_two_and_trains_on_new_feedback(
    tmp_path: Path,
) -> None:
    device = _device(tmp_path)
    shard = device.shard()
    index = {item: row for row, item in enumerate(ITEMS)}
    assert (shard.val_item, shard.test_item) == (index[ITEMS[10]], index[ITEMS[11]])
    assert shard.train_items.tolist() == [index[ITEMS[i]] for i in range(10)]
    assert len(shard.candidates) == 99 and not set(shard.candidates) & set(range(12))
    np.testing.assert_array_equal(shard.candidates, device.shard().candidates)  # stable
    expected = CATALOG.user_schema.encode_one({"age": "34", "gender": "F"})
    np.testing.assert_array_equal(shard.user_features, expected)
    device.record(ITEMS[50], "rating", value=5.0, at=5000.0)  # newer than the held-out items
    after = device.shard()
    assert index[ITEMS[50]] in after.train_items  # new feedback is trained on
    assert (after.val_item, after.test_item) == (shard.val_item, shard.test_item)
    device.record(ITEMS[3], "click", at=6000.0)  # again: one interaction, now the latest
    assert after.train_items.tolist().count(index[ITEMS[3]]) == 1


def test_forget_removes_the_items_and_resets_the_user_row(
    tmp_path: Path, initial: ArrayRecord
) -> None:
    device = _device(tmp_path)
    app = make_client_app(CONFIG)
    _round(app, tmp_path, "train", initial, 1)
    assert device.store.load(keys.STATE_PRIVATE) is not None
    assert device.forget([ITEMS[2], ITEMS[11]]) == 2
    assert {i.item for i in device.history()} == {ITEMS[i] for i in range(12)} - {
        ITEMS[2],
        ITEMS[11],
    }
    assert device.store.load(keys.STATE_PRIVATE) is None  # learnt again from what remains
    shard = device.shard()
    assert shard.test_item == -1  # a held-out item forgotten: no evaluation item any more
    assert device.forget(["not-there"]) == 0


def test_a_device_trains_from_its_store_and_keeps_state_across_runs(
    tmp_path: Path, initial: ArrayRecord
) -> None:
    device = _device(tmp_path)
    app = make_client_app(CONFIG)  # no source given: from the node config (store=, key-file=)
    first = _round(app, tmp_path, "train", initial, 1)
    assert first.content[keys.METRICS][keys.RETURNING] == 0
    assert first.content[keys.METRICS][keys.NUM_EXAMPLES] == 10 * (1 + CONFIG.local.negatives)
    second = _round(app, tmp_path, "train", initial, 2)  # a new run: context.state is empty
    assert second.content[keys.METRICS][keys.RETURNING] == 1  # the row came from the store
    evaluated = _round(app, tmp_path, "evaluate", initial, 2)
    assert evaluated.content[keys.METRICS][keys.USERS] == 1
    status = device.status()
    assert status.rounds_joined == 2 and status.model_round == 2
    assert (status.last_round, status.last_trained_on) == (2, 10)  # 12 minus the 2 held out
    assert status.model_catalog_sha256 == CATALOG.hash and status.last_sync


def test_a_later_run_of_another_model_width_starts_a_new_row(
    tmp_path: Path, initial: ArrayRecord
) -> None:
    device = _device(tmp_path)
    _round(make_client_app(CONFIG), tmp_path, "train", initial, 1)
    narrower = CONFIG.replace(dim=4)  # the next run: the operator changed the model
    arrays = ArrayRecord(initial_shared_state(CATALOG, narrower.model.dim, narrower.data.seed))
    reply = _round(make_client_app(narrower), tmp_path, "train", arrays, 1)
    assert reply.content[keys.METRICS][keys.RETURNING] == 0  # the old row was set aside
    stored = device.store.load(keys.STATE_PRIVATE)
    assert stored is not None and tuple(stored["user_embedding.weight"].shape) == (1, 4)


def test_recommendations_offline_exclude_seen_and_explain(
    tmp_path: Path, initial: ArrayRecord
) -> None:
    device = _device(tmp_path)
    with pytest.raises(DeviceError, match="no global model on this device yet"):
        device.recommend()
    app = make_client_app(CONFIG)
    _round(app, tmp_path, "train", initial, 1)
    recs = device.recommend(k=10, explain=True)
    assert len(recs) == 10 and len({r.item for r in recs}) == 10
    assert not {r.item for r in recs} & {ITEMS[i] for i in range(12)}  # seen: excluded
    assert all(0.0 < r.score < 1.0 and r.title for r in recs)
    assert [r.score for r in recs] == sorted((r.score for r in recs), reverse=True)
    assert all(  # the past items that lift it (positive influence), at most three
        len(r.because) <= 3 and set(r.because) <= {ITEMS[i] for i in range(10)} for r in recs
    )
    assert any(r.because for r in recs)
    for r in recs:  # the genres' shares of the influence, largest first
        shares = [share for _, share in r.genres]
        assert shares == sorted(shares, reverse=True) and all(0 < x <= 1 for x in shares)
    device.record(recs[0].item, "click")  # feedback on a recommendation
    assert recs[0].item not in {r.item for r in device.recommend(k=10)}


def test_the_bundle_is_read_once_per_model_a_round_brings(
    tmp_path: Path, initial: ArrayRecord, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fedrec.client.device import BUNDLE_KEY

    device = _device(tmp_path)
    _round(make_client_app(CONFIG), tmp_path, "train", initial, 1)
    reads: list[str] = []
    load = device.store.load_object
    monkeypatch.setattr(
        device.store, "load_object", lambda k, kind: reads.append(k) or load(k, kind)
    )
    first = device.recommend(k=5)
    assert device.recommend(k=5) == first and reads.count(BUNDLE_KEY) == 1
    scaled = ArrayRecord({k: Array(2.0 * a.numpy()) for k, a in initial.items()})
    device.cache_model(scaled, 2, ConfigRecord({keys.CATALOG_HASH: CATALOG.hash}))
    device.recommend(k=5)  # a new model: read again
    assert reads.count(BUNDLE_KEY) == 3  # cache_model's check of the round, and this call


def test_the_recommend_path_imports_no_torch_and_ranks_as_the_float_model(
    tmp_path: Path, initial: ArrayRecord
) -> None:
    """A fresh process that opens the store and recommends never loads PyTorch, and its top
    10 is the float32 model's (the seed model over the same shared arrays and private row)."""
    import subprocess
    import sys

    device = _device(tmp_path)
    _round(make_client_app(CONFIG), tmp_path, "train", initial, 1)  # trains: a private row
    _round(make_client_app(CONFIG), tmp_path, "evaluate", initial, 2)  # caches these arrays
    probe = (
        "import sys\n"
        "from fedrec.client.device import Device\n"
        "recs = Device.open(sys.argv[1], key_file=sys.argv[2]).recommend(k=10, explain=True)\n"
        "print(' '.join(r.item for r in recs))\n"
        "print('torch' in sys.modules, sorted(m for m in sys.modules if 'opacus' in m)[:1])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe, str(tmp_path / "store"), str(tmp_path / "device.key")],
        check=True, capture_output=True, text=True, timeout=120,
    ).stdout.splitlines()  # fmt: skip
    assert out[1] == "False []"
    items = out[0].split()
    assert items == [r.item for r in device.recommend(k=10)]
    float_items, _ = _float_top(device, {n: a.numpy() for n, a in initial.items()}, 10)
    assert set(items) == {ITEMS[i] for i in float_items}


def test_erase_destroys_the_store(tmp_path: Path) -> None:
    device = _device(tmp_path)
    device.erase()
    assert not (tmp_path / "store").exists()
    with pytest.raises(DeviceError, match="not a device store"):
        Device.open(tmp_path / "store", key_file=tmp_path / "device.key")


def test_a_rolled_back_ledger_stops_the_device_from_training(
    tmp_path: Path, initial: ArrayRecord
) -> None:
    counter = tmp_path / "no-backup" / "store.counter"
    device = Device.create(tmp_path / "store", CATALOG, key_file=tmp_path / "device.key",
                           counter_file=counter)  # fmt: skip
    device.import_history([Interaction(ITEMS[i], "view", None, 1000.0 + i) for i in range(12)])
    dp = CONFIG.replace(local_dp_noise_multiplier=1.0, local_dp_clip_norm=1.0,
                        local_batch_size=4, client_weighting="uniform")  # fmt: skip
    app = make_client_app(dp)
    _round(app, tmp_path, "train", initial, 1)
    ledger = tmp_path / "store" / f"{keys.STATE_RECORD_LEDGER}.sealed"
    backup, one_round = tmp_path / "backup", ledger.read_bytes()
    shutil.copytree(tmp_path / "store", backup)
    _round(app, tmp_path, "train", initial, 2)
    spent = device.status().record_epsilon
    ledger.write_bytes(one_round)  # the ledger alone, from a copy taken a round earlier
    train = server_message("train", initial, 77, 3, catalog=CATALOG)
    with pytest.raises(RolledBackError, match="older copy"):  # the SuperNode replies an error
        app(train, _context(tmp_path))
    with pytest.raises(RolledBackError, match="older copy"):
        Device.open(tmp_path / "store", key_file=tmp_path / "device.key").status()
    shutil.rmtree(tmp_path / "store")
    shutil.copytree(backup, tmp_path / "store")  # the whole store: self-consistent, but old
    with pytest.raises(RolledBackError, match=r"counter .* is at"):
        app(train, _context(tmp_path))
    shutil.rmtree(tmp_path / "store")
    shutil.copytree(backup, tmp_path / "store")
    counter.unlink()  # the counter is the restore's blind spot: with it gone, the copy reads
    status = Device.open(tmp_path / "store", key_file=tmp_path / "device.key").status()
    assert status.record_epsilon is not None and spent is not None
    assert status.record_epsilon < spent
    with pytest.raises(DeviceError, match="already exists"):
        Device.create(tmp_path / "other", CATALOG, key_file=tmp_path / "k2", counter_file=backup)
    Device.open(tmp_path / "store", key_file=tmp_path / "device.key").erase()
    assert not counter.exists()


def test_a_node_config_needs_the_key_of_its_store(tmp_path: Path, initial: ArrayRecord) -> None:
    _device(tmp_path)
    app = make_client_app(CONFIG)
    context = Context(run_id=1, node_id=5, node_config={"store": str(tmp_path / "store")},
                      state=RecordDict(), run_config={})  # fmt: skip
    with pytest.raises(ValueError, match="key-file=PATH or passphrase-file=PATH"):
        app(server_message("train", initial, 5, 1, catalog=CATALOG), context)


# --- the stored format: a store written by this version stays readable ---------------------------
FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "device-store-v1"


def test_a_store_of_format_1_still_opens_and_reads_the_same(tmp_path: Path) -> None:
    """tests/fixtures/device-store-v1 was written by fedrec with DEVICE_FORMAT 1 (a 150-item
    synthetic catalog, seven imported views, a rating and a click, one train round at dim 4).
    Later versions must keep reading it: change this test only with a migration."""
    import shutil

    shutil.copytree(FIXTURE, tmp_path / "v1")
    key = tmp_path / "v1" / "device.key"
    key.chmod(0o600)  # git does not keep a key file's mode
    device = Device.open(tmp_path / "v1" / "store", key_file=key)
    assert device.name == "67f9e0b9e5770400"
    history = device.history()
    assert [i.item for i in history] == ["4", "18", "43", "9", "100", "121", "65", "6", "78"]
    assert [i.event for i in history][-2:] == ["rating", "click"] and history[-2].value == 4.0
    assert history[0].at == 1_700_000_180.0
    shard = device.shard()
    assert (device.catalog.item_ids[shard.val_item], device.catalog.item_ids[shard.test_item]) == (
        "100", "121",
    )  # fmt: skip
    status = device.status()
    assert (status.model_round, status.rounds_joined, status.interactions) == (3, 1, 9)
    assert status.last_round is None  # v1 stores predate it: read as unknown
    assert status.catalog_sha256 == status.model_catalog_sha256 == device.catalog.hash
    assert device.catalog.num_items == 150 and device.catalog.user_feature_dim == 23
    # its cached model is the whole float32 shared group: ranked through the bundle built
    # from it, the scores are the float model's (this user's u has one non-zero column, on
    # which the best items are all 0: their scores tie at σ(b_r), so the items are any of them)
    recs = device.recommend(k=3)
    from fedrec.client.device import MODEL_KEY

    cached = device.store.load_object(MODEL_KEY, "model")
    assert cached is not None
    _, float_scores = _float_top(device, cached[1], 3)
    np.testing.assert_allclose([r.score for r in recs], float_scores, rtol=1e-5)
    assert np.ptp(float_scores) == 0 and len({r.item for r in recs}) == 3


def _float_top(
    device: Device, shared: Mapping[str, np.ndarray], k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The top ``k`` of the float32 seed model (torch) over ``shared`` and the device's row."""
    import torch

    from fedrec.common.model import device_model, load_private_state, load_shared_state

    tensors = {name: torch.from_numpy(np.asarray(a)) for name, a in shared.items()}
    dim = int(tensors["head.weight"].shape[1])
    private = device.store.load(keys.STATE_PRIVATE)
    assert private is not None
    shard = device.shard()
    item_ids = "item_embedding.weight" in tensors
    model = device_model(device.catalog, dim, shard.user_features, item_ids=item_ids)
    load_shared_state(model, tensors)
    row = torch.from_numpy(private["user_embedding.weight"])
    load_private_state(model, {"user_embedding.weight": row, "user_features": model.user_features})
    with torch.no_grad():
        scores = torch.sigmoid(model.score_all(torch.zeros(1, dtype=torch.long))[0]).numpy()
    seen = np.concatenate([shard.train_items, [shard.val_item, shard.test_item]])
    scores[seen[seen >= 0]] = -1.0
    top = np.argsort(-scores, kind="stable")[:k]
    return top, scores[top]


@pytest.mark.parametrize(
    ("key", "value"), [("poison-fraction", 0.1), ("cold-items", 0.2), ("audit-log", "x.jsonl")]
)
def test_a_device_refuses_a_simulation_setting_naming_it(
    tmp_path: Path, initial: ArrayRecord, key: str, value: object
) -> None:
    """A deployed device parses the run config as a deployment: a setting of a simulation
    (poisoning, cold items, the audit log, ...) set by the operator is refused by name, and
    the device trains nothing."""
    _device(tmp_path)
    context = _context(tmp_path)
    context.run_config.update({key: value, "target-items": "1"})  # poisoning names targets
    message = server_message("train", initial, 77, 1, catalog=CATALOG)
    with pytest.raises(ValueError, match=f"{key} = .* is a simulation setting"):
        make_client_app()(message, context)
    assert (
        Device.open(tmp_path / "store", key_file=tmp_path / "device.key").status().rounds_joined
        == 0
    )
