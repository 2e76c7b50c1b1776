"""Stage-in and stage-out as Prefect tasks that retry transient storage failures only.

Each try is one :mod:`p3s.storage` call with one attempt; Prefect retries it with exponential
backoff (``settings.storage.attempts`` tries, ``backoff_seconds`` doubled each time) when the
storage was unavailable or a copy's checksum differed, so every try shows in the run's task
states. A missing file (:class:`~p3s.storage.FileVanished`) or any other error fails at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import Task, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import TaskRun
from prefect.states import State

from p3s import storage
from p3s.catalog import ProductInfo, file_checksums
from p3s.settings import get_settings


def transient_storage_failure(_task: Task[Any, Any], _run: TaskRun, state: State[Any]) -> bool:
    """Retry condition: the try failed with StorageUnavailable or ChecksumMismatch."""
    try:
        state.result()
    except (storage.StorageUnavailable, storage.ChecksumMismatch):
        return True
    except BaseException:  # noqa: BLE001 - anything else is not worth another try
        return False
    return False


_TASK_OPTIONS: dict[str, Any] = {
    "retry_condition_fn": transient_storage_failure,
    "persist_result": False,
    "cache_policy": NO_CACHE,
}


def _retry_options() -> dict[str, Any]:
    settings = get_settings().storage
    retries = max(0, settings.attempts - 1)
    return {
        "retries": retries,
        "retry_delay_seconds": [settings.backoff_seconds * 2**i for i in range(max(1, retries))],
    }


@task(name="stage-in", **_TASK_OPTIONS)
def _stage_in(url: str, scratch_dir: Path) -> Path:
    return storage.stage_in(url, scratch_dir, attempts=1)


@task(name="stage-out", **_TASK_OPTIONS)
def _stage_out(paths: list[Path], outbox_url: str) -> list[ProductInfo]:
    products = []
    for path in paths:
        size, sha256, adler32 = file_checksums(path)
        url = storage.stage_out(path, f"{outbox_url.rstrip('/')}/{path.name}", attempts=1)
        products.append(ProductInfo(path.name, url, size, sha256, adler32))
    return products


def stage_in(url: str, scratch_dir: Path) -> Path:
    """Copy ``url`` into ``scratch_dir`` with size and adler32 checks; returns the local copy."""
    return _stage_in.with_options(**_retry_options())(url, scratch_dir)


def stage_out(paths: list[Path], outbox_url: str) -> list[ProductInfo]:
    """Copy each local product into the folder ``outbox_url`` atomically, in order.

    Returns one :class:`~p3s.catalog.ProductInfo` (URL, size in bytes, sha256, adler32) per
    product. A retry writes every product again; each lands under its final name only whole.
    """
    return _stage_out.with_options(**_retry_options())(paths, outbox_url)
