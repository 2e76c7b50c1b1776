"""Where a payload's products go: light (no numpy, no matplotlib), so the flows, the content
app and the command line can name the folder without importing a payload."""

from __future__ import annotations

import os
from pathlib import Path


def products_subpath(run: int, subrun: int, payload: str) -> str:
    """``run{run:06d}/{subrun:04d}/{payload}``: one payload's folder for one raw file, relative
    to the output area (p3s's ``P3S_OUTPUT_DIR``)."""
    return f"run{int(run):06d}/{int(subrun):04d}/{safe_name(payload)}"


def safe_name(name: str) -> str:
    """Return ``name`` usable as a file name: ``/`` and ``\\`` become ``_``.

    Args:
        name: a product name such as ``"fiber03/persistent_fft"``.

    Returns:
        ``"fiber03_persistent_fft"``.
    """
    cleaned = name.replace("/", "_").replace("\\", "_").strip()
    if not cleaned or cleaned in {".", ".."}:
        raise ValueError(f"product name {name!r} cannot be used as a file name")
    return cleaned


def products_dir(outbox: str | os.PathLike[str], run: int, subrun: int, payload: str) -> Path:
    """Return the folder of one payload's products for one raw file, under run and subrun.

    Args:
        outbox: the output area (p3s's ``P3S_OUTPUT_DIR``, ``P3S_EVDISP_DIR``, ...).
        run: run number of the input file.
        subrun: subrun number of the input file.
        payload: payload name, e.g. ``"tpc_monitor"``.

    Returns:
        ``outbox/run{run:06d}/{subrun:04d}/{payload}``, e.g. ``outbox/run004649/0003/beam``.
    """
    return Path(outbox) / products_subpath(run, subrun, payload)


def products_url(outbox: str, run: int, subrun: int, payload: str) -> str:
    """:func:`products_dir` for an output area given as a URL (``root://host//eos/...``,
    ``file:///...``), whose double slashes a :class:`~pathlib.Path` would fold."""
    return f"{outbox.rstrip('/')}/{products_subpath(run, subrun, payload)}"
