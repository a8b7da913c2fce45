"""The null ServerApp: rounds of fedrec's shape (a train stage, then an evaluate stage, to
every connected node) around the null ClientApp (``client/echo.py``), nothing computed.

Run config: ``num-rounds``; ``min-clients`` (nodes to wait for); ``payload-shapes`` (the
float32 arrays each train and evaluate message carries, as fedrec's carry the model: its
arrays' shapes for the same bytes and the same objects, e.g. "1682x64,64x83,64"), or
``payload-floats`` (one array);
``round-timeout``; ``fail-round`` and ``task-seconds`` (faults for tests: the ClientApp
raises in that round, or takes that long); ``out-dir``, where each round's seconds go to
``rounds.jsonl`` and a summary to ``metrics.json``, as fedrec's run writes them. It waits
for replies as a deployed fedrec server does (server/grid.py).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

from fedrec.server.cohorts import connected_nodes
from fedrec.server.grid import deployed_grid
from fedrec.server.runs import METRICS_FILE, ROUNDS_LOG

__all__ = ["app"]

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    config = context.run_config
    rounds, timeout = int(config.get("num-rounds", 2)), float(config.get("round-timeout", 600.0))
    out = Path(str(config["out-dir"]))
    out.mkdir(parents=True, exist_ok=True)
    nodes = connected_nodes(grid, int(config.get("min-clients", 1)), timeout, what="echo start")
    prompt = deployed_grid(grid)
    # random values: Flower stores and sends objects by content, so a payload of zeros would
    # travel as one chunk repeated, and cost less than a model's; and a model's arrays, not
    # one: Flower sends each array (and its chunks) as an object, one request each
    payload = ArrayRecord(
        {
            f"payload-{i}": Array(np.random.default_rng(i).standard_normal(s).astype(np.float32))
            for i, s in enumerate(_shapes(str(config.get("payload-shapes", "")), config))
        }
    )
    records = []
    for server_round in range(1, rounds + 1):
        started = time.perf_counter()
        train = ConfigRecord(
            {
                "round": server_round,
                "fail": int(server_round == int(config.get("fail-round", 0))),
                "sleep": float(config.get("task-seconds", 0.0)),
            }
        )
        stages = {
            MessageType.TRAIN: RecordDict({"arrays": payload, "config": train}),
            MessageType.EVALUATE: RecordDict(  # fedrec's evaluate message carries the model
                {"arrays": payload, "config": ConfigRecord({"round": server_round})}
            ),
        }
        answered: list[Message] = []
        for kind, content in stages.items():
            messages = [Message(content, node, kind) for node in nodes]
            answered += prompt.send_and_receive(messages, timeout=timeout)
        ok = [m for m in answered if not m.has_error()]
        record = {
            "round": server_round,
            "round_seconds": time.perf_counter() - started,
            "clients_sampled": len(nodes),
            "clients_replied": sum(m.metadata.message_type == MessageType.TRAIN for m in ok),
            "clients_evaluated": sum(m.metadata.message_type == MessageType.EVALUATE for m in ok),
            "errors": sorted({m.error.reason or "" for m in answered if m.has_error()}),
            "clients_unanswered": 2 * len(nodes) - len(answered),
        }
        records.append(record)
        with (out / ROUNDS_LOG).open("a") as fh:
            fh.write(json.dumps(record) + "\n")
    (out / METRICS_FILE).write_text(json.dumps({"rounds": records}, indent=1))


def _shapes(text: str, config: Any) -> list[tuple[int, ...]]:
    """``payload-shapes`` ("1682x64,64x83,64": a model's arrays), else one array of
    ``payload-floats`` values."""
    if not text:
        return [(int(config.get("payload-floats", 1)),)]
    return [tuple(int(n) for n in shape.split("x")) for shape in text.split(",")]
