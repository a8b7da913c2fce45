"""The device SDK: a user's own encrypted store, on the phone-side of a federation.

This is the public API for app developers::

    from fedrec.client.device import Device

    device = Device.create("~/.app/fedrec", "catalog.npz", key_file="~/.app/fedrec.key",
                           user_features={"age": "34", "gender": "F"})
    device.record("242", "view")                       # feedback, as it happens
    device.record("302", "rating", value=4.0)
    for item in device.recommend(k=10):                # offline: no server needed
        print(item.item, item.title, item.score)
    device.status()                                    # model version, rounds, ε spent
    device.forget(["302"])                             # never trained on again
    device.erase()                                     # the store and its key, gone

A :class:`Device` is a folder of sealed files (AES-256-GCM, :mod:`fedrec.common.crypto`,
under a key file or an Argon2id passphrase), one object per file: its description and the
user's raw attributes (``fedrec.device``), its copy of the published catalog, its history of
feedback, and what the federation leaves on it — the private user row, the record-level DP
ledger, the newest global model and the rounds it joined. Nothing in it is ever sent; the
ClientApp of a deployed SuperNode trains from it (:class:`DeviceSource`, node config
``store=PATH key-file=PATH`` or ``passphrase-file=PATH``).

Format: :data:`DEVICE_FORMAT` (1), recorded in the store; a store written by this version is
pinned by a fixture in the tests (tests/fixtures/device-store-v1) that later versions must
keep reading. Every write is atomic, so a crash leaves each object old or new, whole.

Evaluation: a history imported with ``hold_out=2`` (what ``fedrec deploy local`` does with a
data set's users) keeps its last two interactions as the validation and test items of the
federation's evaluation, as in simulation; feedback recorded later is always trained on.
"""

from __future__ import annotations

import hashlib
import secrets
import shutil
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context

from fedrec.client.data import LocalUser
from fedrec.client.explain import explain as explain_items
from fedrec.client.secure_store import EncryptedFileStore, KeyMaterial
from fedrec.common import keys
from fedrec.common.bundle import (
    InferenceBundle,
    build_bundle,
    bundle_arrays,
    bundle_meta,
    bundle_of,
)
from fedrec.common.crypto import Passphrase, load_or_create_key_file, read_key_file
from fedrec.common.data.catalog import Catalog, dump_catalog, load_catalog, read_catalog
from fedrec.common.data.shard import UserShard
from fedrec.common.data.split import MIN_INTERACTIONS_TO_EVALUATE, NO_ITEM
from fedrec.common.fedconfig import FederationConfig
from fedrec.common.files import shred
from fedrec.common.privacy import PrivacyLedger
from fedrec.common.records import scalar

__all__ = [
    "DEVICE_FORMAT",
    "EVENTS",
    "Device",
    "DeviceError",
    "DeviceSource",
    "DeviceStatus",
    "Interaction",
    "Recommendation",
    "read_passphrase",
]

DEVICE_FORMAT = 1  # the layout of a device store; later versions keep reading this one
EVENTS = ("view", "click", "rating")  # implicit feedback; a rating carries its value
CANDIDATES = 99  # evaluation negatives per held-out item, as in simulation

PSEUDONYM = "fedrec-device"  # the owner every object is bound to (one user per store)
META_KEY = "fedrec.device"
CATALOG_KEY = "fedrec.catalog"
HISTORY_KEY = "fedrec.history"
MODEL_KEY = "fedrec.model"  # the whole shared model (stores of format 1; read, not written)
BUNDLE_KEY = "fedrec.bundle"  # the newest model's inference bundle (fedrec.common.bundle)
STATUS_KEY = "fedrec.status"
_CATALOG, _HISTORY, _MODEL, _BUNDLE = "catalog", "history", "model", "bundle"


class DeviceError(ValueError):
    """A device store cannot do what was asked; the message says why and what to do."""


@dataclass(frozen=True)
class Interaction:
    """One piece of feedback the user gave."""

    item: str  # the catalog's item id
    event: str  # one of EVENTS
    value: float | None  # the rating, for a rating
    at: float  # when, in seconds since the epoch


@dataclass(frozen=True)
class Recommendation:
    item: str  # the catalog's item id
    title: str
    score: float  # σ(r): the model's probability that the user would interact
    # with explain=True (client/explain.py): the user's own items with the largest influence
    # on this item's score, the item's genres with their share of it, and the user's items
    # nearest to it in the catalog's text features
    because: tuple[str, ...] = ()
    genres: tuple[tuple[str, float], ...] = ()
    similar_text: tuple[str, ...] = ()


@dataclass(frozen=True)
class DeviceStatus:
    name: str  # the device's random name (no user id)
    catalog_sha256: str
    model_round: int | None  # the round of the cached global model (None: none yet)
    model_catalog_sha256: str | None
    rounds_joined: int  # train rounds this device took part in
    last_round: int | None  # the last train round it took part in
    last_trained_on: int | None  # how many of its interactions that round trained on
    interactions: int
    record_epsilon: float | None  # ε of the device's own DP-SGD ledger, at record_delta
    record_delta: float | None
    user_epsilon: float | None  # the federation's user-level ε, as the server last reported
    last_sync: str | None  # when the server last sent a model (ISO 8601, UTC)


class Device:
    """One user's store. Create it once (:meth:`create`), then :meth:`open` it."""

    def __init__(self, folder: Path, store: EncryptedFileStore, meta: dict[str, Any]) -> None:
        self.folder = folder
        self.store = store
        self._meta = meta
        self._catalog: Catalog | None = None
        # the decoded bundle of the sealed file it came from (inode, mtime, size): a device
        # that recommends again reads nothing until a round writes a new one
        self._bundles: dict[tuple[int, int, int], InferenceBundle] = {}

    # --- lifecycle ------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        path: str | Path,
        catalog: Catalog | str | Path,
        *,
        key_file: str | Path | None = None,
        passphrase: str | None = None,
        user_features: Mapping[str, str] | None = None,
        counter_file: str | Path | None = None,
    ) -> Device:
        """A new store at ``path`` (new or empty) for the published ``catalog``.

        ``key_file`` is read, or created (32 random bytes, mode 0600) if missing; it must lie
        outside ``path``. Or ``passphrase``: every file is sealed under an Argon2id key.
        ``user_features``: the user's own attributes, encoded with the catalog's schema.
        ``counter_file``: a file outside ``path``, where backups and restores of the store
        do not reach (an app's no-backup folder), that only counts up; with it a restore of
        the whole store from an older copy (which would roll back the DP ledger) is refused.
        A single file restored or deleted is refused without it. The store remembers it.
        """
        folder = Path(path).expanduser()
        if folder.exists() and any(folder.iterdir()):
            raise DeviceError(f"{folder} is not empty: a device store needs a new folder")
        if counter_file is not None and Path(counter_file).expanduser().exists():
            raise DeviceError(
                f"counter file {counter_file} already exists (it counts for another or an"
                " erased store): give a new path"
            )
        material = _key_material(folder, key_file, passphrase, create=True)
        published = catalog if isinstance(catalog, Catalog) else load_catalog(catalog)
        attributes = {str(k): str(v) for k, v in (user_features or {}).items()}
        published.user_schema.encode_one(attributes)  # unknown attributes: refused now
        store = EncryptedFileStore(folder, material, PSEUDONYM, counter_file=counter_file)
        meta = {
            "format": DEVICE_FORMAT,
            "name": secrets.token_hex(8),
            "created": _now_iso(),
            "attributes": attributes,
            "candidate_seed": secrets.randbits(63),
        }
        if counter_file is not None:
            meta["counter_file"] = str(Path(counter_file).expanduser().resolve())
        store.save_object(CATALOG_KEY, _CATALOG, {"sha256": published.hash}, {
            "npz": np.frombuffer(dump_catalog(published), dtype=np.uint8)
        })  # fmt: skip
        store.save_object(HISTORY_KEY, _HISTORY, {"held_out": []}, _history_arrays([]))
        store.save_json(META_KEY, meta)
        device = cls(folder, store, meta)
        device._catalog = published
        return device

    @classmethod
    def open(
        cls,
        path: str | Path,
        *,
        key_file: str | Path | None = None,
        passphrase: str | None = None,
    ) -> Device:
        """The store at ``path``, under its key file or passphrase."""
        folder = Path(path).expanduser()
        if not (folder / f"{META_KEY}.sealed").is_file():
            raise DeviceError(
                f"{folder} is not a device store (no {META_KEY}.sealed): create one with"
                " `fedrec client init`"
            )
        store = EncryptedFileStore(folder, _key_material(folder, key_file, passphrase), PSEUDONYM)
        meta = store.load_json(META_KEY) or {}
        if meta.get("counter_file"):  # sealed in the store: a restored copy names it too
            store.use_counter(meta["counter_file"])
        if meta.get("format") != DEVICE_FORMAT:
            raise DeviceError(
                f"{folder} is a device store of format {meta.get('format')!r}; this fedrec"
                f" reads format {DEVICE_FORMAT}"
            )
        return cls(folder, store, meta)

    def erase(self) -> None:
        """Destroy the store: every file, then the folder, and its counter file. A key file
        named at create is the caller's to destroy too (``fedrec client erase`` does both)."""
        for path in sorted(self.folder.iterdir()):
            if path.is_file():
                shred(path)
        shutil.rmtree(self.folder, ignore_errors=True)
        if self._meta.get("counter_file"):  # it counted for this store only
            Path(self._meta["counter_file"]).unlink(missing_ok=True)

    # --- the user's feedback --------------------------------------------------------------
    def record(
        self, item: str, event: str = "view", value: float | None = None, at: float | None = None
    ) -> Interaction:
        """Add one piece of feedback; it enters the next training round."""
        interaction = self._checked(item, event, value, at)
        history, held_out = self._history()
        self._save_history([*history, interaction], held_out)
        return interaction

    def import_history(self, interactions: Iterable[Interaction], *, hold_out: int = 0) -> int:
        """Add many at once (one write); ``hold_out`` (0 or 2) keeps the last two of the whole
        history, by time, as the federation's validation and test items when it has at least
        3 items. Returns how many were added."""
        if hold_out not in (0, 2):
            raise DeviceError(f"hold_out must be 0 or 2 (validation and test), got {hold_out}")
        added = [self._checked(i.item, i.event, i.value, i.at) for i in interactions]
        history, held_out = self._history()
        history = [*history, *added]
        if hold_out:
            ordered = _latest_per_item(history)
            held_out = (
                [i.item for i in ordered[-2:]]
                if len(ordered) >= MIN_INTERACTIONS_TO_EVALUATE
                else []
            )
        self._save_history(history, held_out)
        return len(added)

    def history(self) -> list[Interaction]:
        """Every piece of feedback, in the order recorded."""
        return self._history()[0]

    def forget(self, items: Iterable[str]) -> int:
        """Remove every interaction with ``items``; returns how many were removed.

        They are never trained on again, and the private user row (trained on them) is reset
        to be learnt again from what remains. Updates already sent in earlier rounds cannot
        be taken back (with DP they are covered by the ε already spent).
        """
        gone = {str(i) for i in items}
        history, held_out = self._history()
        kept = [i for i in history if i.item not in gone]
        removed = len(history) - len(kept)
        if removed:
            self._save_history(kept, [i for i in held_out if i not in gone])
            self.store.delete(keys.STATE_PRIVATE)
        return removed

    # --- what the device knows ------------------------------------------------------------
    @property
    def name(self) -> str:
        return str(self._meta["name"])

    @property
    def catalog(self) -> Catalog:
        if self._catalog is None:
            found = self.store.load_object(CATALOG_KEY, _CATALOG)
            if found is None:
                raise DeviceError(f"{self.folder} has no catalog: the store is incomplete")
            self._catalog = read_catalog(found[1]["npz"].tobytes(), self.folder / CATALOG_KEY)
        return self._catalog

    def install_catalog(self, catalog: Catalog | str | Path) -> None:
        """Replace the device's copy of the catalog (a new published version)."""
        published = catalog if isinstance(catalog, Catalog) else load_catalog(catalog)
        history, _ = self._history()
        unknown = sorted({i.item for i in history} - set(published.item_ids))
        if unknown:
            raise DeviceError(f"the new catalog lacks items of this history: {unknown[:5]}")
        self.store.save_object(CATALOG_KEY, _CATALOG, {"sha256": published.hash}, {
            "npz": np.frombuffer(dump_catalog(published), dtype=np.uint8)
        })  # fmt: skip
        self._catalog = published

    def shard(self) -> UserShard:
        """The user's data as the training code takes it (catalog row indices)."""
        catalog = self.catalog
        history, held_out = self._history()
        ordered = catalog.indices_of([i.item for i in _latest_per_item(history)]).tolist()
        held = catalog.indices_of(held_out).tolist()
        train = np.array([i for i in ordered if i not in held], dtype=np.int64)
        features = catalog.user_schema.encode_one(self._meta.get("attributes", {}))
        if len(held) != 2:
            return UserShard(features, train, NO_ITEM, NO_ITEM, np.zeros(0, np.int64),
                             catalog.num_items)  # fmt: skip
        pool = np.setdiff1d(np.arange(catalog.num_items), np.array(ordered), assume_unique=True)
        if len(pool) < CANDIDATES:
            raise DeviceError(
                f"the catalog has {catalog.num_items} items and the user {len(ordered)}: fewer"
                f" than {CANDIDATES} remain to evaluate against"
            )
        rng = np.random.default_rng([int(self._meta["candidate_seed"]), *held])
        candidates = np.sort(rng.choice(pool, size=CANDIDATES, replace=False))
        return UserShard(features, train, held[0], held[1], candidates, catalog.num_items)

    def recommend(
        self, k: int = 10, *, exclude_seen: bool = True, explain: bool = False
    ) -> list[Recommendation]:
        """The top ``k`` of the catalog for this user, ranked here with the newest global model
        the device received and its private user row (no server needed).

        Ranks with the model's inference bundle (:mod:`fedrec.common.bundle`) in NumPy alone:
        nothing on this path loads PyTorch. A device that has no user row of this model yet
        (it has only evaluated, or its row belongs to a model of another width) ranks from its
        features with a zero id row: the model's view of a new user.

        ``explain``: for each item, computed here (:mod:`fedrec.client.explain`): the user's
        own items whose training lifts its score most (their influence through the user row),
        its genres with the share of that lift their past items carry, and the user's items
        nearest to it in the catalog's text features.
        """
        bundle = self._bundle()
        shard = self.shard()
        row = self._user_row(bundle, shard)
        u = bundle.user_vector(row, shard.user_features)
        seen = np.concatenate([shard.train_items, [shard.val_item, shard.test_item]])
        items, scores = bundle.top_k(u, k, seen[seen >= 0] if exclude_seen else None)
        catalog = self.catalog
        titles = catalog.item_titles or ("",) * catalog.num_items
        recommended = [
            Recommendation(catalog.item_ids[i], titles[i], float(s))
            for i, s in zip(items, scores, strict=True)
        ]
        if not explain:
            return recommended
        text = catalog.block("text")
        reasons = explain_items(
            bundle, u, items, shard.train_items, len(row),
            genres=catalog.block("genres"), text=None if text is None else text[0],
        )  # fmt: skip
        ids = catalog.item_ids
        return [
            replace(
                rec,
                because=tuple(ids[j] for j in why.past_items),
                genres=tuple((name.removeprefix("genre="), share) for name, share in why.genres),
                similar_text=tuple(ids[j] for j in why.text_neighbours),
            )
            for rec, why in zip(recommended, reasons, strict=True)
        ]

    def status(self) -> DeviceStatus:
        found = self._cached_model()
        model_meta = found[0] if found is not None else {}
        status = self.store.load_json(STATUS_KEY) or {}
        ledger_doc = self.store.load_json(keys.STATE_RECORD_LEDGER)
        delta = status.get("record_delta")
        record_epsilon = None
        if ledger_doc and delta:
            record_epsilon = PrivacyLedger.from_dict(ledger_doc).epsilon(float(delta))
        return DeviceStatus(
            name=self.name,
            catalog_sha256=self.catalog.hash,
            model_round=model_meta.get("round"),
            model_catalog_sha256=model_meta.get("catalog_sha256"),
            rounds_joined=int(status.get("rounds_joined", 0)),
            last_round=status.get("last_round"),
            last_trained_on=status.get("last_trained_on"),
            interactions=len(self.history()),
            record_epsilon=record_epsilon,
            record_delta=delta,
            user_epsilon=status.get("user_epsilon"),
            last_sync=model_meta.get("received"),
        )

    # --- what the federation leaves on the device (the ClientApp calls these) -------------
    def cache_model(self, arrays: ArrayRecord, server_round: int, config: ConfigRecord) -> None:
        """Keep what the newest global model of a round says about the catalog, for offline
        recommendations: its inference bundle (item vectors in 16-bit codes, the user tower and the
        head), built here in NumPy from the shared arrays the round brought."""
        found = self._cached_model()
        if found is not None and int(found[0].get("round", -1)) > server_round:
            return  # an older model (a late message): keep the newer one
        catalog_sha256 = str(config.get(keys.CATALOG_HASH, ""))
        meta: dict[str, Any] = {
            "round": server_round,
            "catalog_sha256": catalog_sha256,
            "received": _now_iso(),
        }
        bundle_arrays_: dict[str, np.ndarray] = {}
        if catalog_sha256 in ("", self.catalog.hash):  # else: it cannot rank this catalog
            shared = {name: array.numpy() for name, array in arrays.items()}
            bundle = build_bundle(shared, self.catalog.item_features, self.catalog.hash,
                                  server_round)  # fmt: skip
            meta |= {"bundle": bundle_meta(bundle)}
            bundle_arrays_ = bundle_arrays(bundle)
        self.store.save_object(BUNDLE_KEY, _BUNDLE, meta, bundle_arrays_)

    def note_round(
        self, config: FederationConfig, server_round: int, trained_on: int, server: ConfigRecord
    ) -> None:
        """Count a train round the device took part in (``trained_on``: how many of its
        interactions it trained on), and what the server said of its ε."""
        status = self.store.load_json(STATUS_KEY) or {}
        status["rounds_joined"] = int(status.get("rounds_joined", 0)) + 1
        status["last_round"], status["last_trained_on"] = server_round, trained_on
        if config.record_dp.enabled:
            status["record_delta"] = config.record_dp.delta
        if keys.USER_EPSILON in server:
            status["user_epsilon"] = scalar(server, keys.USER_EPSILON)
        self.store.save_json(STATUS_KEY, status)

    # --- internals ------------------------------------------------------------------------
    def _checked(self, item: str, event: str, value: float | None, at: float | None) -> Interaction:
        item = str(item)
        try:
            self.catalog.indices_of([item])
        except ValueError:
            raise DeviceError(
                f"item {item!r} is not in the catalog {self.catalog.hash[:12]}"
            ) from None
        if event not in EVENTS:
            raise DeviceError(f"event must be one of {EVENTS}, got {event!r}")
        if (event == "rating") != (value is not None):
            raise DeviceError("a rating needs a value, and only a rating has one")
        if value is not None and not np.isfinite(value):
            raise DeviceError(f"a rating must be a finite number, got {value!r}")
        return Interaction(item, event, None if value is None else float(value),
                           time.time() if at is None else float(at))  # fmt: skip

    def _history(self) -> tuple[list[Interaction], list[str]]:
        found = self.store.load_object(HISTORY_KEY, _HISTORY)
        if found is None:
            raise DeviceError(f"{self.folder} has no history: the store is incomplete")
        meta, arrays = found
        items = [str(i) for i in meta.get("items", [])]
        history = [
            Interaction(item, EVENTS[int(e)], None if np.isnan(v) else float(v), float(t))
            for item, e, v, t in zip(
                items, arrays["events"], arrays["values"], arrays["at"], strict=True
            )
        ]
        return history, [str(i) for i in meta.get("held_out", [])]

    def _save_history(self, history: Sequence[Interaction], held_out: Sequence[str]) -> None:
        meta = {"items": [i.item for i in history], "held_out": list(held_out)}
        self.store.save_object(HISTORY_KEY, _HISTORY, meta, _history_arrays(history))

    def _cached_model(self) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
        """The newest model's record: its bundle, or (a store written before bundles, format
        1) the whole shared model."""
        found = self.store.load_object(BUNDLE_KEY, _BUNDLE)
        return found if found is not None else self.store.load_object(MODEL_KEY, _MODEL)

    def _bundle(self) -> InferenceBundle:
        path = self.store.path_of(BUNDLE_KEY)
        stat = path.stat() if path.exists() else None
        key = (stat.st_ino, stat.st_mtime_ns, stat.st_size) if stat else None
        if key in self._bundles and self._bundles[key].catalog_sha256 == self.catalog.hash:
            return self._bundles[key]
        bundle = self._read_bundle()
        if key is not None:
            self._bundles = {key: bundle}  # the newest only
        return bundle

    def _read_bundle(self) -> InferenceBundle:
        found = self._cached_model()
        if found is None:
            raise DeviceError(
                "no global model on this device yet: it gets one when it joins a federation"
                " round (`fedrec client join`)"
            )
        meta, arrays = found
        if meta.get("catalog_sha256") not in ("", self.catalog.hash):
            raise DeviceError(
                f"the cached model is built on catalog {str(meta['catalog_sha256'])[:12]}, the"
                f" device holds {self.catalog.hash[:12]}: join a round of the new version"
            )
        if "bundle" in meta:
            return bundle_of(meta["bundle"], arrays, f"{self.folder}: {BUNDLE_KEY}")
        catalog = self.catalog  # a format-1 store's whole model: its bundle, built once here
        return build_bundle(arrays, catalog.item_features, catalog.hash, int(meta["round"]))

    def _user_row(self, bundle: InferenceBundle, shard: UserShard) -> np.ndarray:
        """The device's private id row, or zeros where it has none of this model's width."""
        private = self.store.load_arrays(keys.STATE_PRIVATE)
        width = bundle.input_dim - len(shard.user_features)
        row = None if private is None else private.get("user_embedding.weight")
        if row is None or row.shape != (1, width):
            return np.zeros(width, np.float32)
        return np.asarray(row[0], dtype=np.float32)


@dataclass(frozen=True)
class DeviceSource:
    """The ClientApp's :class:`~fedrec.client.data.ShardSource` on a deployed device: the
    user comes from its own :class:`Device` store (no ``partition-id``), which also keeps
    the private state, the DP ledger and the newest model across runs. Holds two paths: it
    pickles cheaply with the ClientApp."""

    folder: Path
    key_file: str | None = None
    passphrase_file: str | None = None

    def __post_init__(self) -> None:
        if (self.key_file is None) == (self.passphrase_file is None):
            raise DeviceError("a device store opens with key-file=PATH or passphrase-file=PATH")

    def device(self) -> Device:
        passphrase = read_passphrase(self.passphrase_file) if self.passphrase_file else None
        return Device.open(self.folder, key_file=self.key_file, passphrase=passphrase)

    def catalog(self, config: FederationConfig, context: Context) -> Catalog:
        """The store's copy (read once per process and file version: every mod asks)."""
        stat = (self.folder / f"{CATALOG_KEY}.sealed").stat()
        version = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)
        return _stored_catalog(self, version)

    def local_user(self, config: FederationConfig, context: Context) -> LocalUser:
        device = self.device()
        stream = int.from_bytes(hashlib.sha256(device.name.encode()).digest()[:4], "big")
        return LocalUser(device.name, stream, device.shard(), device.store, device=device)


@lru_cache(maxsize=4)
def _stored_catalog(source: DeviceSource, version: tuple[int, int, int, int]) -> Catalog:
    return source.device().catalog


def read_passphrase(path: str | Path) -> str:
    """A store's passphrase from a file: its first line (no newline)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return lines[0] if lines else ""


def _key_material(
    folder: Path, key_file: str | Path | None, passphrase: str | None, create: bool = False
) -> KeyMaterial:
    if (key_file is None) == (passphrase is None):
        raise DeviceError("give key_file or passphrase (one of the two)")
    if passphrase is not None:
        if not passphrase:
            raise DeviceError("the passphrase is empty")
        return Passphrase(passphrase)
    assert key_file is not None
    path = Path(key_file).expanduser()
    if path.resolve().is_relative_to(folder.resolve()):
        raise DeviceError(f"key file {path} must live outside the store it protects ({folder})")
    return load_or_create_key_file(path)[0] if create else read_key_file(path)


def _history_arrays(history: Sequence[Interaction]) -> dict[str, np.ndarray]:
    return {
        "events": np.array([EVENTS.index(i.event) for i in history], dtype=np.uint8),
        "values": np.array([np.nan if i.value is None else i.value for i in history]),
        "at": np.array([i.at for i in history], dtype=np.float64),
    }


def _latest_per_item(history: Sequence[Interaction]) -> list[Interaction]:
    """One interaction per item (its latest), in time order (ties: the order recorded)."""
    latest: dict[str, tuple[float, int, Interaction]] = {}
    for order, interaction in enumerate(history):
        latest[interaction.item] = (interaction.at, order, interaction)
    return [entry[2] for entry in sorted(latest.values(), key=lambda e: (e[0], e[1]))]


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
