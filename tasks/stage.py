"""Stage-in and stage-out as Prefect tasks that retry transient storage failures only.

Each try is one :mod:`p3s.files.storage` call with one attempt; Prefect retries it with exponential
backoff (:mod:`p3s.tasks.retries`) when the storage was unavailable or a copy's checksum
differed, so every try shows in the run's task states. A missing file
(:class:`~p3s.files.storage.FileVanished`) or any other error fails at once.
"""

from __future__ import annotations

from pathlib import Path

from p3s.tasks.retries import retry_on, storage_retries, storage_task_options
from prefect import task

from p3s.dqm.catalog import ProductInfo, file_checksums
from p3s.files import storage

#: Retry condition: the try failed with StorageUnavailable or ChecksumMismatch.
transient_storage_failure = retry_on(storage.StorageUnavailable, storage.ChecksumMismatch)
_TASK_OPTIONS = storage_task_options(transient_storage_failure)


@task(name="stage-in", **_TASK_OPTIONS)
def _stage_in(url: str, scratch_dir: Path) -> storage.Staged:
    return storage.stage_in_checked(url, scratch_dir, attempts=1)


@task(name="stage-out", **_TASK_OPTIONS)
def _stage_out(paths: list[Path], outbox_url: str) -> list[ProductInfo]:
    products = []
    for path in paths:
        size, sha256, adler32 = file_checksums(path)
        dest = f"{outbox_url.rstrip('/')}/{path.name}"
        url = storage.stage_out(path, dest, attempts=1, adler32=adler32)
        products.append(ProductInfo(path.name, url, size, sha256, adler32))
    return products


def stage_in(url: str, scratch_dir: Path) -> storage.Staged:
    """Copy ``url`` into ``scratch_dir`` with size and adler32 checks.

    Returns the local copy with its size (bytes) and adler32, computed once during the copy.
    """
    return _stage_in.with_options(**storage_retries())(url, scratch_dir)


def stage_out(paths: list[Path], outbox_url: str) -> list[ProductInfo]:
    """Copy each local product into the folder ``outbox_url`` atomically, in order.

    Returns one :class:`~p3s.dqm.catalog.ProductInfo` (URL, size in bytes, sha256, adler32) per
    product. A retry writes every product again; each lands under its final name only whole.
    """
    return _stage_out.with_options(**storage_retries())(paths, outbox_url)
