"""``p3s dqm files|results|purity|channels|products|quality|checks``: the DQM catalog;
``p3s dqm reference set|unset|list`` and ``p3s dqm recheck``: data quality.

Tables fit an 80-column terminal; ``--json`` prints one JSON object per line with every field.
The catalog is ``settings.catalog`` (``P3S_CATALOG_URL``), or ``--catalog URL``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from p3s.dqm.links import PAYLOAD_PAGES

app = typer.Typer(help="Query the DQM catalog (files, results, purity, channels, products).")
console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

CatalogOption = Annotated[
    str | None, typer.Option("--catalog", help="Catalog URL (default: the settings' catalog).")
]
JsonOption = Annotated[bool, typer.Option("--json", help="JSON lines with every field.")]
RunOption = Annotated[int | None, typer.Option("--run", "-r", help="Only this run.")]
OUTCOME_WORD = {"completed": "ok", "failed": "failed", "corrupt": "corrupt"}
OUTCOME_STYLE = {"completed": "green", "failed": "red", "corrupt": "magenta"}


def _catalog(url: str | None) -> Any:
    from p3s.dqm.catalog import open_catalog

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
        parts.append(f"{PAYLOAD_PAGES.get(payload, payload)}:[{style}]{word}[/{style}]")
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


QUALITY_STYLE = {"good": "green", "medium": "yellow", "bad": "red"}


def _quality(value: str) -> str:
    style = QUALITY_STYLE.get(value, "white")
    return f"[{style}]{value}[/{style}]"


@app.command()
def quality(
    run: RunOption = None,
    problems: Annotated[
        bool, typer.Option("--problems", help="Only flags that are medium or bad.")
    ] = False,
    catalog: CatalogOption = None,
    as_json: JsonOption = False,
) -> None:
    """Quality flags per run and APA/TPC (area ``run``: the whole run) and the first reason."""
    rows = _catalog(catalog).dq_flags(run, worse_than_good=problems)
    _emit(
        rows,
        as_json,
        [
            ("run", "right", lambda r: str(r["run"])),
            ("area", "left", lambda r: r["area"]),
            ("flag", "left", lambda r: _quality(r["quality"])),
            ("reason", "left", lambda r: (r["reasons"] or [""])[0]),
        ],
        "no quality flags" + (f" for run {run}" if run is not None else ""),
    )


@app.command()
def checks(
    run: Annotated[int, typer.Option("--run", "-r", help="The run.")],
    problems: Annotated[
        bool, typer.Option("--problems", help="Only checks that are medium or bad.")
    ] = False,
    catalog: CatalogOption = None,
    as_json: JsonOption = False,
) -> None:
    """Every check result of a run: place, quality and reason (``--json``: value, version)."""
    rows = _catalog(catalog).dq_checks(run, worse_than_good=problems)
    _emit(
        rows,
        as_json,
        [
            ("check", "left", lambda r: r["check"]),
            ("place", "left", lambda r: r["place"]),
            ("flag", "left", lambda r: _quality(r["quality"])),
            ("reason", "left", lambda r: r["reason"]),
        ],
        f"no check results for run {run}",
    )


reference_app = typer.Typer(help="Reference runs that plots and histogram checks compare with.")
app.add_typer(reference_app, name="reference")
PayloadOption = Annotated[
    str | None,
    typer.Option("--payload", "-p", help="Only this payload (default: every payload)."),
]


def _payload(name: str | None) -> str:
    from p3s.dqm.catalog import ANY_PAYLOAD
    from p3s.system.datatypes import DQM_DEPLOYMENTS

    if name is None:
        return ANY_PAYLOAD
    if name not in DQM_DEPLOYMENTS:
        raise typer.BadParameter(
            f"{name!r} is not a DQM payload ({', '.join(DQM_DEPLOYMENTS)})", param_hint="--payload"
        )
    return name


@reference_app.command("set")
def reference_set(
    run: Annotated[int, typer.Argument(help="The reference run (processed already).")],
    payload: PayloadOption = None,
    catalog: CatalogOption = None,
) -> None:
    """Make RUN the reference run (of one payload, or of every payload)."""
    name = _payload(payload)
    try:
        _catalog(catalog).set_reference(run, name)
    except ValueError as exc:
        err.print(f"[red]not set[/red]: {exc}")
        raise typer.Exit(1) from None
    err.print(f"reference run of {'every payload' if name == '*' else name}: {run}")
    err.print("run `p3s dqm recheck` to compare stored runs with it")


@reference_app.command("unset")
def reference_unset(payload: PayloadOption = None, catalog: CatalogOption = None) -> None:
    """Forget the reference run (of one payload, or the one set for every payload)."""
    name = _payload(payload)
    if not _catalog(catalog).unset_reference(name):
        err.print(f"no reference run was set for {'every payload' if name == '*' else name}")
        raise typer.Exit(1)
    err.print(f"reference run of {'every payload' if name == '*' else name} unset")


@reference_app.command("list")
def reference_list(catalog: CatalogOption = None, as_json: JsonOption = False) -> None:
    """The reference runs: per payload, and ``*`` for every payload."""
    refs = _catalog(catalog).references()
    rows = [{"payload": p, "run": r} for p, r in sorted(refs.items())]
    _emit(
        rows,
        as_json,
        [("payload", "left", lambda r: r["payload"]), ("run", "right", lambda r: str(r["run"]))],
        "no reference run set",
    )


def _since(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(
            f"{value!r} is not an ISO date or time (e.g. 2018-10-01 or 2018-10-01T07:00)",
            param_hint="--since",
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


@app.command()
def recheck(
    since: Annotated[
        str | None, typer.Option(help="Only results finished since this ISO date/time (UTC).")
    ] = None,
    run: RunOption = None,
    checks_dir: Annotated[
        str | None,
        typer.Option("--checks", help="Folder of check files (default: the settings')."),
    ] = None,
    catalog: CatalogOption = None,
    as_json: JsonOption = False,
) -> None:
    """Re-evaluate the checks on stored outputs (no payload runs); print changed flags.

    Flags that became worse emit ``p3s.dqm.quality`` (the bad-flag alarm) when a Prefect
    server is configured.
    """
    from p3s.dqm.checks import CheckFileError, load_checks
    from p3s.dqm.quality import recheck as do_recheck

    if since is not None and run is not None:
        raise typer.BadParameter("give --since or --run, not both", param_hint="--since")
    try:
        files = load_checks(checks_dir)
    except CheckFileError as exc:
        err.print(f"[red]check file refused[/red]: {exc}")
        raise typer.Exit(1) from None
    report = do_recheck(_catalog(catalog), run=run, since=_since(since), checks=files)
    _announce(report)
    if as_json:
        print(json.dumps(report.as_dict()))
        return
    err.print(f"re-evaluated {report.evaluated} stored result(s)")
    _emit(
        report.as_dict()["changed"],
        False,
        [
            ("run", "right", lambda r: str(r["run"])),
            ("area", "left", lambda r: r["area"]),
            ("before", "left", lambda r: _quality(r["before"] or "-")),
            ("after", "left", lambda r: _quality(r["after"])),
        ],
        "no flag changed",
    )


def _announce(report: Any) -> None:
    """Emit the quality events of a recheck when a Prefect API is configured."""
    from prefect.settings import PREFECT_API_URL

    from p3s.dqm.catalog import FlagChange
    from p3s.dqm.events import emit_quality

    if not PREFECT_API_URL.value():
        return
    changes = [
        FlagChange(run, area, after, before, ())
        for (run, area), (before, after) in report.changes.items()
    ]
    emit_quality(changes)
