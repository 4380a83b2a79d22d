"""When a task is worth retrying: only when the same call may succeed if simply made again."""

from __future__ import annotations

from typing import Any

from prefect import Task
from prefect.client.schemas.objects import State, TaskRun

from custody.chunks import is_transient


def retry_if_transient(_task: Task[..., Any], _run: TaskRun, state: State[Any]) -> bool:
    """A Prefect ``retry_condition_fn``: retry lost connections and timeouts, not refusals.

    A refused request (no such archive, a checksum that does not match, a bad setting) fails
    the same way every time; retrying it only delays the error the user has to read. Not only
    errors marked transient count: a connection lost to custody's own store reaches a task as
    the raw driver error.
    """
    error = state.data
    return isinstance(error, BaseException) and is_transient(error)
