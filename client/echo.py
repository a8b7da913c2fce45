"""The null ClientApp: replies to a train message with the arrays it received, sign-flipped,
and to an evaluate message with one metric, computing nothing else. (Flower stores and sends
objects by content: an exact echo would send no array bytes back, a model update does.)

Run against fedrec's on the same deployment (``server/echo.py`` is its ServerApp,
``benchmarks/deployment.py`` runs both), its round is Flower's own floor there: the transport,
the SuperNode's polls, the executor, the server's waits, with the same bytes as a fedrec
round. fedrec's round over this one is what fedrec's own work costs.

It also injects faults for the runtime's tests (tests/deploy/test_executor_e2e.py): a train
message whose config says ``fail`` = 1 makes it raise, ``sleep`` = S makes it take S seconds.
"""

from __future__ import annotations

import time

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedrec.client.mods import packing_mod
from fedrec.common.records import config_of, integer, scalar

__all__ = ["app"]

app = ClientApp(mods=[packing_mod])  # a deployed server packs arrays (common/packing.py)


@app.train()
def echo(msg: Message, context: Context) -> Message:
    config = config_of(msg.content)
    time.sleep(scalar(config, "sleep", 0.0))
    if integer(config, "fail", 0):
        raise RuntimeError(f"echo: failing round {integer(config, 'round', 0)} as asked")
    arrays = msg.content.array_records["arrays"]
    flipped = ArrayRecord({k: Array(np.negative(v.numpy())) for k, v in arrays.items()})
    return Message(RecordDict({"arrays": flipped}), reply_to=msg)


@app.evaluate()
def answer(msg: Message, context: Context) -> Message:
    return Message(RecordDict({"metrics": MetricRecord({"echo": 1})}), reply_to=msg)
