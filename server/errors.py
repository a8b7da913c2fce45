"""A run's setting errors as one line under Flower's own runtime (``flwr run``).

``fedrec simulate`` and the ``fedrec`` commands print an error in a setting, a missing file or
a run every device refuses as one red line. A ServerApp that ``flwr run`` starts runs in
Flower's process instead, and Flower 1.42 logs any exception a ServerApp raises with its
whole traceback (``flwr/simulation/run_simulation.py``, ``flwr/simulation/app.py``; the run
then ends ``finished:failed``). :class:`RunError` marks such an error, and
:func:`report_in_one_line` filters Flower's logger of the process (Flower logs the error after
the ServerApp has returned, so the filter stays): a record about a :class:`RunError` keeps
its one line and loses its traceback. Any other exception (a bug) is logged as Flower logs
it, traceback and all.
"""

from __future__ import annotations

import logging
import sys

__all__ = ["RunError", "report_in_one_line"]


class RunError(RuntimeError):
    """A run that cannot go on for a reason its operator can fix (stated in the message)."""


def _run_error(error: BaseException | None) -> RunError | None:
    """The RunError in ``error``'s chain of causes, if any."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, RunError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


class _OneLine(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        raised = record.exc_info[1] if record.exc_info else sys.exc_info()[1]
        error = _run_error(raised)
        if error is None:
            return True
        if str(record.msg).startswith("Traceback (most recent call last)"):
            return False  # the traceback Flower logs as a message of its own
        record.msg, record.args, record.exc_info, record.exc_text = (
            "fedrec: %s",
            (error,),
            None,
            None,
        )
        return True


def report_in_one_line(logger: str = "flwr") -> None:
    """Log every :class:`RunError` of this process as one line (idempotent)."""
    target = logging.getLogger(logger)
    for where in (target, *target.handlers):  # records of child loggers pass the handlers only
        if not any(isinstance(f, _OneLine) for f in where.filters):
            where.addFilter(_OneLine())
