"""Command line that runs one DQM payload on one raw file: what a p3s job executes.

::

    python -m p3s.payloads run NAME INPUT OUTBOX [--events N]
    python -m p3s.payloads list

``run`` opens INPUT with :func:`~p3s.payloads.rawformat.open_raw`, calls
``p3s.payloads.NAME.analyse`` and writes the :class:`~p3s.payloads.products.PayloadResult`
into ``OUTBOX/run{run:06d}/{subrun:04d}/NAME`` (:func:`~p3s.payloads.products.products_dir`).
It prints one summary line and the products folder on stdout, errors on stderr, and exits with
a ``sysexits.h`` code so a flow can tell a bad input (do not retry) from anything else:

====  ================  ===================================================================
0     EX_OK             products written
2     usage             bad command line (unknown payload, ``--events`` not a positive int)
65    EX_DATAERR        the input is not valid np04 raw HDF5 (:class:`RawFormatError`)
66    EX_NOINPUT        INPUT does not exist or is not a file
69    EX_UNAVAILABLE    the payload module is not installed in this version
73    EX_CANTCREAT      the products cannot be written into OUTBOX
====  ================  ===================================================================

Payload modules are imported by name only when asked for, so this works with any subset of
them present. Nothing here imports Prefect.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from . import PAYLOADS
from .products import PayloadResult, products_dir
from .rawformat import RawFormatError, open_raw

__all__ = [
    "EX_CANTCREAT",
    "EX_DATAERR",
    "EX_NOINPUT",
    "EX_UNAVAILABLE",
    "EX_USAGE",
    "PAYLOADS",
    "PayloadUnavailable",
    "analyse_file",
    "load_payload",
    "main",
    "run_payload",
]


EX_USAGE = 2  # argparse's code for command-line errors
EX_DATAERR = 65
EX_NOINPUT = 66
EX_UNAVAILABLE = 69
EX_CANTCREAT = 73


class PayloadUnavailable(RuntimeError):
    """The payload's module is not part of this installation."""


def load_payload(name: str) -> ModuleType:
    """Import and return the module ``p3s.payloads.<name>``.

    Raises:
        ValueError: ``name`` is not one of :data:`PAYLOADS`.
        PayloadUnavailable: the module does not exist (an import error inside an existing
            module is not hidden: it propagates as is).
    """
    if name not in PAYLOADS:
        raise ValueError(f"unknown payload {name!r}; payloads: {', '.join(PAYLOADS)}")
    module_name = f"{__package__}.{name}"
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        raise PayloadUnavailable(f"payload {name!r} is not available ({module_name})") from exc


def analyse_file(
    name: str, input_path: str | os.PathLike[str], *, n_events: int | None = None
) -> PayloadResult:
    """Run payload ``name`` on one raw file and return its result (nothing written).

    Args:
        name: one of :data:`PAYLOADS`.
        input_path: the raw file (np04 raw HDF5).
        n_events: analyse the first ``n_events`` events only (None: the payload's default).

    Raises:
        FileNotFoundError: ``input_path`` is not a file.
        RawFormatError: the input is not valid (on open or while reading events).
        PayloadUnavailable, ValueError: see :func:`load_payload`.
    """
    module = load_payload(name)
    kwargs = {} if n_events is None else {"n_events": n_events}
    with open_raw(input_path) as raw:
        return module.analyse(raw, **kwargs)


def run_payload(
    name: str,
    input_path: str | os.PathLike[str],
    outbox: str | os.PathLike[str],
    *,
    n_events: int | None = None,
) -> tuple[PayloadResult, Path, list[Path]]:
    """Run payload ``name`` on one raw file and write its products under ``outbox``.

    Same arguments and errors as :func:`analyse_file`; the products go to
    ``products_dir(outbox, run, subrun, name)``.

    Returns:
        The result (figures closed), its products folder and the paths written.
    """
    result = analyse_file(name, input_path, n_events=n_events)
    outdir = products_dir(outbox, result.run, result.subrun, name)
    return result, outdir, result.write(outdir)


def _payload_name(value: str) -> str:
    if value not in PAYLOADS:
        raise argparse.ArgumentTypeError(
            f"unknown payload {value!r}; choose one of: {', '.join(PAYLOADS)}"
        )
    return value


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a positive integer")
    return number


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m p3s.payloads", description="Run p3s DQM payloads on np04 raw files."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser(
        "run",
        help="run one payload on one raw file",
        description="Run one payload on INPUT; products go to OUTBOX/runRRRRRR/SSSS/NAME.",
    )
    run.add_argument("name", metavar="NAME", type=_payload_name, help=" | ".join(PAYLOADS))
    run.add_argument("input", metavar="INPUT", type=Path, help="np04 raw HDF5 file")
    run.add_argument("outbox", metavar="OUTBOX", type=Path, help="output area")
    run.add_argument(
        "--events",
        "-n",
        type=_positive_int,
        default=None,
        metavar="N",
        help="analyse the first N events only (default: the payload's own)",
    )
    commands.add_parser("list", help="print the payload names")
    return parser


def _error(message: str, code: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m p3s.payloads``; returns the exit code (see module doc)."""
    args = _parser().parse_args(argv)
    if args.command == "list":
        print("\n".join(PAYLOADS))
        return 0
    if not args.input.is_file():
        return _error(f"{args.input}: no such raw file", EX_NOINPUT)
    start = time.perf_counter()
    try:
        result = analyse_file(args.name, args.input, n_events=args.events)
    except RawFormatError as exc:
        return _error(str(exc), EX_DATAERR)
    except FileNotFoundError as exc:  # removed between the check and the open
        return _error(str(exc), EX_NOINPUT)
    except PayloadUnavailable as exc:
        return _error(str(exc), EX_UNAVAILABLE)
    outdir = products_dir(args.outbox, result.run, result.subrun, args.name)
    try:
        paths = result.write(outdir)
    except OSError as exc:
        return _error(f"cannot write products into {outdir}: {exc}", EX_CANTCREAT)
    print(
        f"{args.name}: run {result.run} subrun {result.subrun}, {args.input.name}, "
        f"{len(paths)} products in {time.perf_counter() - start:.1f} s"
    )
    print(f"products: {outdir}")
    return 0
