"""Shared builders for fake Flower Contexts and Messages, and the catalogs tests run on
(tests call ClientApps directly, as the simulation engine does)."""

from __future__ import annotations

import atexit
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from functools import cache, lru_cache
from pathlib import Path

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    Metadata,
    MetricRecord,
    RecordDict,
)

from fedrec.common import keys
from fedrec.common.data.catalog import Catalog, build_catalog, load_catalog, save_catalog
from fedrec.common.fedconfig import FederationConfig

# The real MovieLens 100K, read in place (never copied: its license forbids redistribution).
ML100K = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ml-100k"
needs_ml100k = pytest.mark.skipif(
    not ML100K.exists(), reason="MovieLens 100K not found at ../shared/data/ml-100k"
)


def federation(**settings: object) -> FederationConfig:
    """A federation config from settings by their field names (``clients_per_round=10``),
    each its kebab-case key (``clients-per-round``): what tests build configs with."""
    return FederationConfig.from_mapping({k.replace("_", "-"): v for k, v in settings.items()})


def node_context(user: int, num_users: int, run_config: dict | None = None) -> Context:
    """A node's Context as the simulation engine builds it (partition-id = user index)."""
    return Context(
        run_id=1,
        node_id=user + 1,
        node_config={"partition-id": user, "num-partitions": num_users},
        state=RecordDict(),
        run_config=run_config or {},
    )


def server_message(
    message_type: str,
    arrays: ArrayRecord | None,
    node_id: int,
    server_round: int = 1,
    *,
    catalog: Catalog | None = None,
) -> Message:
    """A message as the server would send it to ``node_id`` (with ``catalog``'s hash, as
    the server sends it with every model)."""
    config = ConfigRecord({keys.SERVER_ROUND: server_round})
    if catalog is not None:
        config[keys.CATALOG_HASH] = catalog.hash
    content = RecordDict({keys.CONFIG: config})
    if arrays is not None:
        content[keys.ARRAYS] = arrays
    metadata = Metadata(
        run_id=1,
        message_id=uuid.uuid4().hex,
        src_node_id=0,
        dst_node_id=node_id,
        reply_to_message_id="",
        group_id=str(server_round),
        created_at=time.time(),
        ttl=3600.0,
        message_type=message_type,
    )
    return Message(metadata=metadata, content=content)


def model_arrays(scale: float = 1.0) -> ArrayRecord:
    """A small shared-model stand-in: a 3 x 4 item table and a bias, times ``scale``."""
    return ArrayRecord({
        "item_embedding.weight": Array(np.arange(12, dtype=np.float32).reshape(3, 4) * scale),
        "head.bias": Array(np.array([0.5], dtype=np.float32) * scale),
    })  # fmt: skip


def train_reply(arrays: ArrayRecord, examples: int, loss: float, node: int) -> Message:
    """A device's train reply: ``arrays`` and its metrics (examples, unit weight, loss)."""
    metrics = MetricRecord(
        {keys.NUM_EXAMPLES: examples, keys.UNIT_WEIGHT: 1, keys.TRAIN_LOSS: loss}
    )
    content = RecordDict({keys.ARRAYS: arrays, keys.METRICS: metrics})
    return Message(content=content, reply_to=server_message("train", None, node_id=node))


def eval_reply(metrics: dict[str, float], node: int) -> Message:
    """A device's evaluate reply carrying ``metrics``."""
    content = RecordDict({keys.METRICS: MetricRecord(metrics)})  # type: ignore[arg-type]
    return Message(content=content, reply_to=server_message("evaluate", None, node_id=node))


def with_catalog(config: FederationConfig) -> FederationConfig:
    """``config`` with ``catalog`` set to its data's published catalog (built once per data
    settings, in a folder removed when the test process exits)."""
    sim = config.simulation
    return config.replace(
        catalog=_catalog_path(config.data.data, config.data.threshold, sim.synthetic_users,
                              sim.synthetic_items, config.data.seed)
    )  # fmt: skip


def catalog_of(config: FederationConfig) -> Catalog:
    """The catalog ``config`` names (set by :func:`with_catalog`)."""
    return load_catalog(config.data.catalog)


@cache
def _catalog_path(data: str, threshold: float, users: int, items: int, seed: int) -> str:
    synthetic = federation(synthetic_users=users, synthetic_items=items, seed=seed)
    catalog = build_catalog(data, threshold=threshold, synthetic=synthetic.synthetic())
    return str(save_catalog(catalog, _scratch() / f"catalog-{catalog.hash[:16]}.npz"))


@lru_cache(maxsize=1)
def _scratch() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="fedrec-test-catalogs-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


class ScriptedGrid:
    """A Grid of fixed nodes whose replies ``answer(message)`` scripts (``None``: that node
    does not reply); it keeps every message sent, in order."""

    def __init__(self, node_ids: list[int], answer: Callable[[Message], Message | None]) -> None:
        self.node_ids = list(node_ids)
        self.answer = answer
        self.sent: list[Message] = []

    def get_node_ids(self) -> list[int]:
        return list(self.node_ids)

    def send_and_receive(self, messages: object, *, timeout: float | None = None) -> list[Message]:
        sent = list(messages)  # type: ignore[call-overload]
        self.sent.extend(sent)
        replies = [self.answer(m) for m in sent]
        return [r for r in replies if r is not None]


class StaticGrid:
    """A Grid of fixed nodes that answers nothing (the server's side of a round only)."""

    def __init__(self, node_ids: list[int]) -> None:
        self.node_ids = list(node_ids)
        self.sent: list[Message] = []

    def get_node_ids(self) -> list[int]:
        return list(self.node_ids)

    def send_and_receive(self, messages: object, *, timeout: float | None = None) -> list[Message]:
        self.sent.extend(messages)  # type: ignore[call-overload]
        return []
