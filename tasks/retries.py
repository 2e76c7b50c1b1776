"""When a task that touches storage is tried again, and how long it waits first.

Every storage-touching task of a DQM flow (stage-in, stage-out, the file's life cycle, the
output transport) retries transient failures with exponential backoff from
``settings.storage`` (``attempts`` tries, ``backoff_seconds`` doubled each time), so every try
shows in the run's task states. What would fail again on the same input is not retried.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prefect import Task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import TaskRun
from prefect.states import State

from p3s.system.settings import get_settings

RetryCondition = Callable[[Task[Any, Any], TaskRun, State[Any]], bool]


def retry_on(
    *errors: type[BaseException], unless: tuple[type[BaseException], ...] = ()
) -> RetryCondition:
    """A Prefect ``retry_condition_fn``: retry when the try raised one of ``errors``, and
    none of ``unless`` (checked first)."""

    def condition(_task: Task[Any, Any], _run: TaskRun, state: State[Any]) -> bool:
        try:
            state.result()
        except unless:
            return False
        except errors:
            return True
        except BaseException:  # noqa: BLE001 - anything else is not worth another try
            return False
        return False

    condition.__name__ = "retry_on_" + "_".join(e.__name__ for e in errors)
    return condition


def storage_task_options(condition: RetryCondition) -> dict[str, Any]:
    """Task options shared by every storage-touching task: results are not persisted or
    cached (each try must act again), retried when ``condition`` says so."""
    return {"retry_condition_fn": condition, "persist_result": False, "cache_policy": NO_CACHE}


def storage_retries() -> dict[str, Any]:
    """``retries`` and ``retry_delay_seconds`` from ``settings.storage``, read when the task
    is called (settings may change between runs of one process)."""
    settings = get_settings().storage
    retries = max(0, settings.attempts - 1)
    return {
        "retries": retries,
        "retry_delay_seconds": [settings.backoff_seconds * 2**i for i in range(max(1, retries))],
    }
