"""A seeded federation in one process: the real ServerApp round loop and ClientApp, no engine.

``fedrec simulate`` runs Flower's simulation engine: Ray actors, random node ids, cohorts and
DP noise drawn from OS entropy. Two such runs of one scenario differ in every cohort, so
their test HR@10 moves by about ±0.015 on ml-100k and a 1 % effect (secure aggregation's
quantization, say) cannot be seen between them. This module runs the *same* code —
:func:`fedrec.server.app.run_federation` (the round loop, its aggregators, DP-FedAvg, the
server step, the run folder) and :func:`fedrec.client.app.make_client_app` (mods, trainers,
private state) —
with an :class:`InProcessGrid` in place of the engine's:

* node ``i + 1`` is partition ``i`` (the engine draws node ids at random);
* every message and reply travels as Flower's protobuf, as through the engine's link state,
  so no object is shared between server and client;
* a ClientApp exception becomes an error reply, as in the engine;
* the server's draws (``ServerRandomness.seeded``: uniform and Poisson cohorts, the
  evaluation panel, DP noise, the SecAgg+ graph) and the ``random`` module are seeded from
  ``seed``.

Two runs with one seed then see the same cohorts, the same client randomness and the same
noise (bit for bit without SecAgg+; its devices quantize with fresh randomness, so two
SecAgg+ runs agree to the quantization step), and a change of configuration (secure
aggregation on/off) is compared *paired*. The grid records each train fan-out's nodes so a
comparison can check that its arms were.

Research only: a seeded noise generator makes DP noise predictable to whoever knows the
seed, so a run from here makes no privacy claim (``metrics.json`` says so under
``reproducible``). One process, one core: a 943-user round of 100 clients takes about as
long as in the engine (``benchmarks/secagg_paired.py`` reports both).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode
from flwr.common.secure_aggregation.secaggplus_constants import Stage
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from fedrec.common import keys
from fedrec.common.fedconfig import FederationConfig
from fedrec.common.secagg import wire
from fedrec.server.runs import prepare_run_dir
from fedrec.simulations.poisoning import poisoned_population
from fedrec.simulations.runner import simulation_inputs

__all__ = [
    "RUN_ID",
    "SERVER_NODE_ID",
    "InProcessGrid",
    "run_inprocess",
    "run_summarized",
    "seeded_task",
]

RUN_ID = 1
SERVER_NODE_ID = 0  # Flower's SuperLink node id; nodes are 1..N


class InProcessGrid(Grid):
    """A Flower Grid whose nodes are ClientApp calls in this process, one after another.

    ``cohorts`` lists, per train round, the sorted node ids the server sent it to (the setup
    stage of a secure round, the train messages of a plain one). Only the calls a strategy
    makes are served (``get_node_ids``, ``send_and_receive``); the rest of Flower's Grid —
    the run record, one-way push and pull — has no meaning in one process and raises.
    """

    def __init__(self, app: ClientApp, num_nodes: int) -> None:
        if num_nodes < 1:
            raise ValueError(f"num_nodes must be >= 1, got {num_nodes}")
        self.app = app
        self.contexts = {
            user + 1: Context(
                run_id=RUN_ID,
                node_id=user + 1,
                node_config={"partition-id": user, "num-partitions": num_nodes},
                state=RecordDict(),
                run_config={},
            )
            for user in range(num_nodes)
        }
        self.cohorts: list[list[int]] = []
        self._next_id = 0

    def get_node_ids(self) -> list[int]:
        return list(self.contexts)

    @property
    def run(self) -> Run:
        raise NotImplementedError("the in-process grid has no run record")

    def set_run(self, run: Run) -> None:
        raise NotImplementedError("the in-process grid has no run record")

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        raise NotImplementedError("build the Message directly (flwr.app.Message)")

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        raise NotImplementedError("the in-process grid only sends and receives in one call")

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        raise NotImplementedError("the in-process grid only sends and receives in one call")

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> list[Message]:
        messages = list(messages)
        if messages and _starts_train_round(messages[0]):
            self.cohorts.append(sorted(m.metadata.dst_node_id for m in messages))
        return [self._deliver(message) for message in messages]

    def _deliver(self, message: Message) -> Message:
        self._next_id += 1
        message.metadata.__dict__["_message_id"] = f"m{self._next_id}"  # as Flower's grid does
        received = message_from_proto(message_to_proto(message))
        node = received.metadata.dst_node_id
        if node not in self.contexts:
            raise ValueError(f"message to node {node}: this grid has nodes 1..{len(self.contexts)}")
        try:
            reply = self.app(received, self.contexts[node])
        except Exception as err:  # the engine answers with an error reply; so does this grid
            reason = f"{type(err)}:<'{err}'>"
            code = ErrorCode.CLIENT_APP_RAISED_EXCEPTION
            reply = Message(Error(code=code, reason=reason), reply_to=received)
        return message_from_proto(message_to_proto(reply))


def _starts_train_round(message: Message) -> bool:
    if message.metadata.message_type != "train":
        return False
    if not message.has_content() or wire.SECAGG not in message.content:
        return True
    return message.content[wire.SECAGG][wire.STAGE] == Stage.SETUP


@contextmanager
def seeded_task(seed: int) -> Iterator[None]:
    """Flower's task identity for this process and a seeded ``random``, restored afterwards.

    Flower sets the identity (private class attributes, no public setter in 1.42) when it
    starts a ServerApp; creating a Message needs it. ``random`` is seeded too, so that
    nothing a seeded run calls can draw from the process's own state.
    """
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    state = random.getstate()
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = RUN_ID, SERVER_NODE_ID, 1
    random.seed(seed)
    try:
        yield
    finally:
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved
        random.setstate(state)


def run_inprocess(
    config: FederationConfig,
    seed: int,
    on_round: Callable[[dict[str, Any]], None] | None = None,
    client_app: ClientApp | None = None,
    grid_factory: Callable[[ClientApp, int], InProcessGrid] = InProcessGrid,
) -> tuple[dict[str, Any], InProcessGrid]:
    """Run ``config`` with every server-side draw seeded by ``seed``; returns its metrics
    (also written to ``config.out_dir``, with a ``reproducible`` record) and the grid
    (``grid_factory(app, nodes)``: an InProcessGrid that also records, for the audit)."""
    from fedrec.server.app import ServerRandomness, run_federation

    if config.outputs.out_dir:
        prepare_run_dir(config.outputs.out_dir, config.outputs.resume)
    provenance = {
        "reproducible": {
            "backend": "in-process (fedrec.simulations.inprocess)",
            "server_seed": seed,
            "note": "cohorts and DP noise come from a seeded generator: research runs only, "
            "no privacy claim",
        }
    }
    with simulation_inputs(config) as inputs:
        config = inputs.config
        honest = client_app or inputs.client_app()
        app, nodes = poisoned_population(honest, config, inputs.users)
        grid = grid_factory(app, nodes)
        with seeded_task(seed):
            metrics = run_federation(
                grid,
                config,
                on_round,
                randomness=ServerRandomness.seeded(seed),
                provenance=provenance,
                expected_nodes=nodes,
            )
    if config.outputs.out_dir:
        from fedrec.server.plots import plot_rounds

        plot_rounds(metrics["rounds"], Path(config.outputs.out_dir))
    return metrics, grid


def run_summarized(values: Mapping[str, Any], seed: int, out: str) -> dict[str, Any]:
    """:func:`run_inprocess` of the kebab-case settings ``values`` into ``out``, summarized
    for a comparison (the benchmarks run it in worker processes): test metrics at the best
    validation round, validation and test HR@10 by evaluated round, user-level ε, the
    secure-aggregation record, bytes per client and round and the whole traffic, the train
    fan-outs' nodes, seconds."""
    logging.getLogger("flwr").setLevel(logging.WARNING)
    started = time.perf_counter()
    config = FederationConfig.from_mapping(values).replace(out_dir=out)
    metrics, grid = run_inprocess(config, seed)
    evaluated = [r for r in metrics["rounds"] if "eval" in r]
    return {
        "seed": seed,
        "out": out,
        "seconds": time.perf_counter() - started,
        "final": metrics["final"],
        "best_round": metrics["best_round"],
        "val_hr": {r["round"]: r["eval"].get(keys.VAL_PREFIX + keys.HR) for r in evaluated},
        "test_hr": {r["round"]: r["eval"].get(keys.HR) for r in evaluated},
        "user_epsilon": (metrics["privacy"].get("user_level") or {}).get("epsilon"),
        "secure_aggregation": metrics["secure_aggregation"],
        "bytes_per_client_round": metrics["bytes_per_client_round"],
        "traffic": metrics["traffic"],
        "cohorts": grid.cohorts,
    }
