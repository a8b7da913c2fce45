"""Flower's task runtime on a SuperNode, as fedrec's warm executor uses it.

The one module that touches Flower internals (Flower 1.42; :data:`FLOWER_VERSIONS`). A
SuperNode started with ``--isolation process`` spawns nothing: it queues each message it
pulls as a *task* on its local Runtime API, and some executor must claim it. Flower's own
executor (``flower-superexec``) claims a task with ``AcquireTask`` and starts a fresh
``flwr-clientapp --token T`` for it, which pulls the task's input with that token, imports the
app, runs it, pushes the reply and the task's final status, and exits
(``flwr/supernode/runtime/run_clientapp.py``). fedrec's executor (client/executor.py) does the
same steps in one long-lived process with the app imported once, through the functions here:

* :class:`TaskClaimer`: ``AcquireTask`` for ClientApp tasks (what flower-superexec calls);
* :class:`ClaimedTask`: the token's session: pull the input (Flower's ``pull_task_input``),
  heartbeats while the task runs, push the reply (``push_message``) and the final status with
  the context (``push_task_output``); :func:`error_reply` builds the error reply and status
  exactly as ``run_clientapp`` does;
* :func:`clientapp_ref`: the ClientApp a FAB names (``[tool.flwr.app.components]``);
* :func:`launch_flower_clientapp`: Flower's own per-message process, for a task of another app;
* :func:`run_handed_over`: a task of another app whose input the executor already pulled (the
  pull activates a task, once), run in a fresh process as ``flwr-clientapp`` would.

tests/client/test_flower_tasks.py drives these through a real SuperNode and SuperLink: when a
Flower release changes any of them, that test fails, naming the step.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import flwr
from flwr.app import Context, Message
from flwr.app.error import Error
from flwr.app.message import remove_content_from_message
from flwr.common.config import get_fab_config
from flwr.common.constant import ErrorCode, SubStatus
from flwr.common.serde import (
    context_from_proto,
    context_to_proto,
    fab_from_proto,
    message_to_proto,
    run_from_proto,
)
from flwr.proto.node_pb2 import Node  # pylint: disable=E0611
from flwr.proto.runtime_pb2 import (  # pylint: disable=E0611
    AcquireTaskRequest,
    PullAppMessagesRequest,
    PullTaskInputRequest,
    PullTaskInputResponse,
    PushAppMessagesRequest,
    PushTaskOutputRequest,
    SendTaskHeartbeatRequest,
)
from flwr.supercore.constant import TaskType
from flwr.supercore.inflatable.inflatable_object import (
    get_all_nested_objects,
    get_object_tree,
    no_object_id_recompute,
)
from flwr.supercore.inflatable.inflatable_protobuf_utils import (
    make_confirm_message_received_fn_protobuf,
    make_pull_object_fn_protobuf,
    make_push_object_fn_protobuf,
)
from flwr.supercore.inflatable.inflatable_utils import (
    pull_and_inflate_object_from_tree,
    push_objects,
)
from flwr.supercore.interceptors import (
    RuntimeTokenHttpInterceptor,
    RuntimeVersionHttpInterceptor,
)
from flwr.supercore.retry import make_simple_http_retry_invoker
from flwr.supercore.runtime import RuntimeHttpClient

__all__ = [
    "FLOWER_VERSIONS",
    "ClaimedTask",
    "FlowerVersionError",
    "TaskClaimer",
    "TaskInput",
    "Ticket",
    "check_flower_version",
    "clientapp_ref",
    "error_reply",
    "hand_over",
    "launch_flower_clientapp",
    "run_handed_over",
]

FLOWER_VERSIONS = ("1.42.",)  # the releases whose runtime this module was written against
HEARTBEAT_SECONDS = 10.0  # Flower's task tokens expire after two missed 30 s heartbeats


class FlowerVersionError(RuntimeError):
    """The installed Flower is not a release this runtime was written against."""


def check_flower_version(version: str | None = None) -> None:
    found = version or flwr.__version__
    if not found.startswith(FLOWER_VERSIONS):
        raise FlowerVersionError(
            f"fedrec's warm executor drives Flower's task runtime, written against Flower"
            f" {', '.join(v + 'x' for v in FLOWER_VERSIONS)}; this is Flower {found}. Run the"
            " SuperNode with its default isolation (no --isolation process, no executor), or"
            " install a supported Flower"
        )


@dataclass(frozen=True)
class Ticket:
    """A task claimed with ``AcquireTask``: its token authorizes the calls that follow."""

    token: str
    task_id: int
    run_id: int
    fab_hash: str


@dataclass(frozen=True)
class TaskInput:
    """What ``pull_task_input`` returns: the message, its node's context, the run, the FAB."""

    message: Message
    context: Context
    run: Any  # flwr.supercore.run.Run
    fab: Any  # flwr.supercore.fab.Fab


def _client(
    address: str,
    root_certificates: bytes | None,
    component: str,
    token: str | None = None,
    *,
    retry: bool = True,
) -> RuntimeHttpClient:
    """A Runtime API client as Flower's processes make it; ``retry=False``: one try per
    call (Flower's invoker otherwise retries a refused connection for ever, and a process
    waiting in it does not see its stop signal)."""
    interceptors: list[Any] = [RuntimeVersionHttpInterceptor(component_name=component)]
    if token is not None:
        interceptors.append(RuntimeTokenHttpInterceptor(token))
    invoker = make_simple_http_retry_invoker()
    if not retry:
        invoker.max_tries = 1
    return RuntimeHttpClient.from_server_address(
        server_address=address,
        insecure=root_certificates is None,
        root_certificates=root_certificates,
        interceptors=interceptors,
        retry_invoker=invoker,
    )


class TaskClaimer:
    """Claims ClientApp tasks on a SuperNode's Runtime API, as ``flower-superexec`` does."""

    def __init__(self, address: str, root_certificates: bytes | None = None) -> None:
        self.address = address
        self.root_certificates = root_certificates
        self._client = _client(address, root_certificates, "SuperExec", retry=False)

    def acquire(self) -> Ticket | None:
        """The next pending ClientApp task, claimed (``None`` if there is none)."""
        response = self._client.AcquireTask(
            AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP])
        )
        if not response.HasField("task") or not response.token:
            return None
        task = response.task
        return Ticket(response.token, task.task_id, task.run_id, task.fab_hash)

    def session(self, ticket: Ticket) -> ClaimedTask:
        return ClaimedTask(self.address, self.root_certificates, ticket)

    def close(self) -> None:
        self._client.close()


class ClaimedTask:
    """One claimed task: what ``flwr-clientapp --token`` does with it, step by step."""

    def __init__(
        self,
        address: str,
        root_certificates: bytes | None,
        ticket: Ticket,
        claimed: PullTaskInputResponse | None = None,
    ) -> None:
        """``claimed``: the input another process claimed (a handed-over task)."""
        self.ticket = ticket
        self.cancelled = threading.Event()  # the SuperNode no longer runs this task
        self._client = _client(address, root_certificates, "flwr-clientapp", ticket.token)
        self._input = claimed

    def claim_input(self) -> tuple[Any, bytes]:
        """The task's FAB (to see which app it is) and the raw ``PullTaskInputResponse``.
        This activates the task: a second claim fails; :meth:`pull_input` or a handed-over
        process (:func:`run_handed_over`) takes it from here."""
        self._input = self._client.PullTaskInput(PullTaskInputRequest())
        return fab_from_proto(self._input.fab), self._input.SerializeToString()

    def pull_input(self) -> TaskInput:
        """The message, context, run and FAB: Flower's ``pull_task_input`` on the input
        already claimed (it pulls and inflates the message)."""
        if self._input is None:
            raise RuntimeError("claim_input first: the task's input is claimed once")
        return _pull(self._client, self._input)

    @contextmanager
    def heartbeats(self, interval: float = HEARTBEAT_SECONDS) -> Iterator[None]:
        """Heartbeats while the block runs. Flower's sender raises SIGINT in the process
        when the SuperNode answers that the task is gone; here that only sets
        :attr:`cancelled` (the executor serves other tasks after this one)."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(interval):
                try:
                    alive = self._client.SendTaskHeartbeat(SendTaskHeartbeatRequest()).success
                except Exception:  # a transient failure: Flower's sender retries too
                    continue
                if not alive:
                    self.cancelled.set()
                    return

        thread = threading.Thread(target=beat, name=f"heartbeat-{self.ticket.task_id}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=5)

    def push_reply(self, reply: Message, context: Context) -> None:
        """The reply and its objects (``run_clientapp.push_message``)."""
        reply.metadata.__dict__["_message_id"] = reply.object_id
        proto = message_to_proto(remove_content_from_message(reply))
        with no_object_id_recompute():
            tree = get_object_tree(reply)
            pushed = self._client.PushMessages(
                PushAppMessagesRequest(messages_list=[proto], message_object_trees=[tree])
            )
            push_objects(
                get_all_nested_objects(reply),
                make_push_object_fn_protobuf(
                    self._client.PushObject,
                    Node(node_id=context.node_id),
                    run_id=context.run_id,
                    session_id=pushed.session_id,
                ),
                object_ids_to_push=set(pushed.objects_to_push),
            )

    def finish(self, context: Context | None, sub_status: str, details: str) -> None:
        """The task's final status and the node's context, which Flower keeps for the run
        (``run_clientapp.push_task_output``)."""
        self._client.PushTaskOutput(
            PushTaskOutputRequest(
                context=context_to_proto(context) if context else None,
                sub_status=sub_status,
                details=details,
            )
        )

    def close(self) -> None:
        self._client.close()


def _pull(client: RuntimeHttpClient, claimed: PullTaskInputResponse) -> TaskInput:
    """The claimed input's context, run and FAB, and the message pulled and inflated
    (``run_clientapp.pull_task_input`` after its ``PullTaskInput``)."""
    context = context_from_proto(claimed.context)
    run, fab = run_from_proto(claimed.run), fab_from_proto(claimed.fab)
    pulled = client.PullMessages(PullAppMessagesRequest())
    if not pulled.messages_list:
        raise RuntimeError("No messages received from Runtime API")
    node = Node(node_id=context.node_id)
    tree = pulled.message_object_trees[0]
    message = pull_and_inflate_object_from_tree(
        tree,
        make_pull_object_fn_protobuf(client.PullObject, node, context.run_id),
        make_confirm_message_received_fn_protobuf(
            client.ConfirmMessageReceived, node, context.run_id
        ),
        return_type=Message,
    )
    message.metadata.__dict__["_message_id"] = tree.object_id  # not in the deflated message
    return TaskInput(message, context, run, fab)


def error_reply(message: Message | None, error: BaseException) -> tuple[Message | None, str]:
    """The error reply and the task's status details for an exception in the app, exactly as
    Flower's ``run_clientapp`` builds them (its error code, its reason format)."""
    from flwr.clientapp.client_app import LoadClientAppError

    code = int(ErrorCode.CLIENT_APP_RAISED_EXCEPTION)
    reason = str(type(error)) + ":<'" + str(error) + "'>"
    if isinstance(error, LoadClientAppError):
        reason = "An exception was raised when attempting to load `ClientApp`"
        code = int(ErrorCode.LOAD_CLIENT_APP_EXCEPTION)
    reply = None if message is None else Message(Error(code=code, reason=reason), reply_to=message)
    return reply, reason


COMPLETED, FAILED = str(SubStatus.COMPLETED), str(SubStatus.FAILED)


def clientapp_ref(fab: Any) -> str:
    """The ClientApp a FAB names (``module:attribute``), '' if it names none."""
    try:
        config = get_fab_config(fab.content)
    except Exception:  # a FAB that does not parse is not ours to run in-process
        return ""
    components = config.get("tool", {}).get("flwr", {}).get("app", {}).get("components", {})
    return str(components.get("clientapp", ""))


def launch_flower_clientapp(
    address: str, ticket: Ticket, root_certificates: Path | None = None
) -> subprocess.Popen[bytes]:
    """Flower's per-message process for a claimed task (what flower-superexec launches)."""
    argv = [
        _beside_python("flwr-clientapp"),
        "--runtime-api-address",
        address,
        "--token",
        ticket.token,
    ]
    argv += ["--root-certificates", str(root_certificates)] if root_certificates else ["--insecure"]
    return subprocess.Popen(argv)


def hand_over(
    address: str, ticket: Ticket, task_input: bytes, root_certificates: Path | None = None
) -> subprocess.Popen[bytes]:
    """A fresh process runs a task whose input this process already pulled."""
    argv = [sys.executable, "-m", "fedrec.client.flower_tasks", address]
    argv += [str(root_certificates)] if root_certificates else []
    process = subprocess.Popen(argv, stdin=subprocess.PIPE)
    assert process.stdin is not None
    process.stdin.write(ticket.token.encode() + b"\n" + task_input)
    process.stdin.close()
    return process


def run_handed_over(address: str, root_certificates: Path | None, token: str, raw: bytes) -> int:
    """``flwr-clientapp``'s run with the task's input given, not claimed: Flower's own steps
    (pull the message, install the FAB, load the app with Flower's loader, run it, push the
    reply and the status), with heartbeats."""
    from flwr.cli.install import install_from_fab
    from flwr.clientapp.utils import get_load_client_app_fn

    certificates = Path(root_certificates).read_bytes() if root_certificates else None
    claimed = PullTaskInputResponse.FromString(raw)
    task = ClaimedTask(address, certificates, Ticket(token, 0, 0, ""), claimed)
    message: Message | None = None
    context: Context | None = None
    sub_status, details, reply = FAILED, "ClientApp task failed due to unknown reason", None
    with task.heartbeats():
        try:
            taken = task.pull_input()
            message, context = taken.message, taken.context
            install_from_fab(taken.fab.content, skip_prompt=True)
            load = get_load_client_app_fn(default_app_ref="", app_path=None, multi_app=True)
            app = load(taken.run.fab_id, taken.run.fab_version, taken.fab.hash_str)
            reply = app(message=message, context=context)
            sub_status, details = COMPLETED, ""
        except Exception as error:
            reply, details = error_reply(message, error)
        try:
            if reply is not None and context is not None:
                task.push_reply(reply, context)
        finally:
            task.finish(context, sub_status, details)
            task.close()
    return 0 if sub_status == COMPLETED else 1


def _beside_python(name: str) -> str:
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else name


if __name__ == "__main__":  # hand_over's child: ADDRESS [ROOT_CERTIFICATES], token + input on stdin
    data = sys.stdin.buffer.read()
    token, _, task_input = data.partition(b"\n")
    certs = Path(sys.argv[2]) if len(sys.argv) > 2 else None
    sys.exit(run_handed_over(sys.argv[1], certs, token.decode(), task_input))
