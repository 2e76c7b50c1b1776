"""``p3s dqm files|results|purity|channels|products``: queries of the DQM catalog.

Tables fit an 80-column terminal; ``--json`` prints one JSON object per line with every field.
The catalog is ``settings.catalog`` (``P3S_CATALOG_URL``), or ``--catalog URL``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Query the DQM catalog (files, results, purity, channels, products).")
console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

CatalogOption = Annotated[
    str | None, typer.Option("--catalog", help="Catalog URL (default: the settings' catalog).")
]
JsonOption = Annotated[bool, typer.Option("--json", help="JSON lines with every field.")]
RunOption = Annotated[int | None, typer.Option("--run", "-r", help="Only this run.")]
PAYLOAD_SHORT = {"tpc_monitor": "tpc", "purity": "pur", "evdisplay": "evd", "beam": "beam"}
OUTCOME_WORD = {"completed": "ok", "failed": "failed", "corrupt": "corrupt"}
OUTCOME_STYLE = {"completed": "green", "failed": "red", "corrupt": "magenta"}


def _catalog(url: str | None) -> Any:
    from p3s.catalog import open_catalog

    try:
        return open_catalog(url)
    except Exception as exc:  # noqa: BLE001 - any driver error: say which catalog and why
        err.print(f"[red]cannot open the DQM catalog[/red] {url or '(settings)'}: {exc}")
        raise typer.Exit(1) from None


def _plain(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def _emit(
    rows: Sequence[dict[str, Any]],
    as_json: bool,
    columns: Sequence[tuple[str, str, Callable[[dict[str, Any]], str]]],
    empty: str,
) -> None:
    """Print ``rows`` as JSON lines or as a table of ``(header, justify, cell)`` columns."""
    if as_json:
        for row in rows:
            print(json.dumps({k: _plain(v) for k, v in row.items()}))
        return
    if not rows:
        err.print(empty)
        return
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for header, justify, _ in columns:
        table.add_column(header, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for row in rows:
        table.add_row(*(cell(row) for _, _, cell in columns))
    console.print(table)


def _num(value: Any, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _outcomes(row: dict[str, Any]) -> str:
    parts = []
    for payload, outcome in sorted(row["outcomes"].items()):
        style = OUTCOME_STYLE.get(outcome, "white")
        word = OUTCOME_WORD.get(outcome, outcome)
        parts.append(f"{PAYLOAD_SHORT.get(payload, payload)}:[{style}]{word}[/{style}]")
    return " ".join(parts) or "-"


@app.command()
def files(
    run: RunOption = None, catalog: CatalogOption = None, as_json: JsonOption = False
) -> None:
    """Raw files with run, subrun and each payload's outcome."""
    rows = _catalog(catalog).files(run=run)
    _emit(
        rows,
        as_json,
        [
            ("file", "left", lambda r: r["name"]),
            ("run", "right", lambda r: str(r["run"])),
            ("sub", "right", lambda r: str(r["subrun"])),
            ("outcomes", "left", _outcomes),
        ],
        "no files in the catalog",
    )


@app.command()
def results(
    file: Annotated[str | None, typer.Argument(help="Only this raw file (its name).")] = None,
    run: RunOption = None,
    catalog: CatalogOption = None,
    as_json: JsonOption = False,
) -> None:
    """DQM results (file x payload): outcome, finish time and reason, newest first."""
    rows = _catalog(catalog).results(file_name=file, run=run)
    _emit(
        rows,
        as_json,
        [
            ("run", "right", lambda r: str(r["run"])),
            ("payload", "left", lambda r: r["payload"]),
            ("outcome", "left", lambda r: r["outcome"]),
            ("finished", "left", lambda r: r["finished"].strftime("%m-%d %H:%M:%S")),
            ("reason", "left", lambda r: r["reason"] or ""),
        ],
        "no DQM results in the catalog",
    )


@app.command()
def purity(
    run: RunOption = None, catalog: CatalogOption = None, as_json: JsonOption = False
) -> None:
    """Electron lifetime per run and TPC, as p3s's purity page listed it."""
    rows = _catalog(catalog).purity(run=run)
    _emit(
        rows,
        as_json,
        [
            ("run", "right", lambda r: str(r["run"])),
            ("TPC", "right", lambda r: str(r["tpc"])),
            ("timestamp", "left", lambda r: r["timestamp"]),
            ("lifetime ms", "right", lambda r: _num(r["lifetime_ms"])),
            ("error ms", "right", lambda r: _num(r["error_ms"])),
            ("count", "right", lambda r: str(r["count"])),
        ],
        "no purity rows" + (f" for run {run}" if run is not None else ""),
    )


@app.command()
def channels(
    run: Annotated[int, typer.Option("--run", "-r", help="The run.")],
    catalog: CatalogOption = None,
    as_json: JsonOption = False,
) -> None:
    """Channel status of a run per file, APA and plane: dead, noisy, mean RMS and pedestal."""
    rows = _catalog(catalog).channels(run)
    _emit(
        rows,
        as_json,
        [
            ("file", "left", lambda r: r["file"]),
            ("APA", "right", lambda r: str(r["apa"])),
            ("plane", "left", lambda r: r["plane"]),
            ("chans", "right", lambda r: str(r["n_channels"])),
            ("dead", "right", lambda r: str(r["n_dead"])),
            ("noisy", "right", lambda r: str(r["n_noisy"])),
            ("RMS", "right", lambda r: _num(r["mean_rms"])),
            ("ped", "right", lambda r: _num(r["mean_pedestal"], 0)),
        ],
        f"no channel status for run {run}",
    )


@app.command()
def products(
    run: Annotated[int, typer.Option("--run", "-r", help="The run.")],
    payload: Annotated[
        str | None, typer.Option("--payload", "-p", help="Only one payload.")
    ] = None,
    catalog: CatalogOption = None,
    as_json: JsonOption = False,
) -> None:
    """Output products of a run with sizes and adler32 (``--json`` adds sha256 and URLs)."""
    rows = _catalog(catalog).products(run, payload=payload)
    _emit(
        rows,
        as_json,
        [
            ("sub", "right", lambda r: str(r["subrun"])),
            ("payload", "left", lambda r: r["payload"]),
            ("product", "left", lambda r: r["name"]),
            ("bytes", "right", lambda r: str(r["size"])),
            ("adler32", "left", lambda r: r["adler32"]),
        ],
        f"no products for run {run}",
    )
