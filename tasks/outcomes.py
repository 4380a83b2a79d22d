"""End states for runs that stop as planned without success: denied, timed out, partly failed.

A flow that ends Failed or Cancelled on purpose still has a result to report (a migration's
tables, an archive's policies). Prefect 3.8 turns a final state's data into the exception it
raises to a caller, and it can only do that with an exception: a pydantic result there makes it
log ``TypeError: ... cannot be resolved into an exception`` with a traceback. So the state
carries :class:`RunStopped`, an exception holding the result:

* ``state.result(raise_on_failure=False)`` gives the ``RunStopped``, which reads like the result
  it holds (``.status``, ``.tables``) and has it in ``.result``;
* calling the flow from Python raises it, with the result in ``.result``;
* under ``serve`` or a worker, Prefect also logs any non-Completed final state as "Engine
  execution exited with unexpected exception" at ERROR, with a traceback. For a planned stop the
  run's own log already says what happened, so :class:`_PlannedStopFilter` turns that record into
  one INFO line (an ERROR in the Logs tab should mean something went wrong unexpectedly).
"""

from __future__ import annotations

import logging
from typing import Any

from prefect.client.schemas.objects import State
from prefect.exceptions import FailedRun
from prefect.states import Cancelled, Failed

from custody.errors import CustodyError

#: The logger Prefect's flow-run logs (and the engine's "unexpected exception" record) go to.
FLOW_RUN_LOGGER = "prefect.flow_runs"


class RunStopped(CustodyError):
    """A run that stopped as planned (denied, not approved in time, partly failed).

    Attributes:
        result: what the run did before it stopped (a result model, counts and references).
    """

    def __init__(self, message: str, result: Any) -> None:
        super().__init__(message)
        self.result = result

    def __reduce__(self) -> tuple[Any, ...]:
        # Prefect may pickle the state's data into its result store.
        return (type(self), (str(self), self.result))

    def __getattr__(self, name: str) -> Any:
        # Only for names the exception lacks: read-through to the result (``.status``...).
        if name.startswith("_") or name == "result":
            raise AttributeError(name)
        return getattr(self.result, name)


def failed(message: str, result: Any) -> State[Any]:
    """A Failed end state carrying ``result`` in a form Prefect can raise."""
    _quiet_planned_stops()
    return Failed(message=message, data=RunStopped(message, result))


def cancelled(message: str, result: Any) -> State[Any]:
    """A Cancelled end state (e.g. an approval denied) carrying ``result``."""
    _quiet_planned_stops()
    return Cancelled(message=message, data=RunStopped(message, result))


#: Final-state messages the Prefect server writes itself for a stop this process planned for.
_EXPECTED: set[str] = set()


def expect_pause_timeout() -> None:
    """The run's pause timed out and the flow handled it (audited, nothing changed).

    The server then refuses the flow's own end state and fails the run itself ("The flow was
    failed and never resumed."); the engine's report of that is a planned stop too.
    """
    _quiet_planned_stops()
    _EXPECTED.add("never resumed")


class _PlannedStopFilter(logging.Filter):
    """Log the engine's report of a planned stop as one INFO line, without the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        planned = isinstance(exc, FailedRun) and any(m in str(exc) for m in _EXPECTED)
        if isinstance(exc, RunStopped) or planned:
            record.levelno, record.levelname = logging.INFO, logging.getLevelName(logging.INFO)
            record.msg, record.args = "Run stopped as planned: %s", (str(exc),)
            record.exc_info, record.exc_text = None, None
        return True


def _quiet_planned_stops() -> None:
    """Install the filter once on the flow-run logger (after Prefect configured logging)."""
    logger = logging.getLogger(FLOW_RUN_LOGGER)
    if not any(isinstance(f, _PlannedStopFilter) for f in logger.filters):
        logger.addFilter(_PlannedStopFilter())


_quiet_planned_stops()
