"""``p3s simulate``: write a simulated np04 raw HDF5 file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

DEFAULT_LIFETIME_MS = 3.0


def parse_lifetimes(values: list[str], tpcs: list[int]) -> dict[int, float]:
    """Turn ``--lifetime`` values into TPC -> lifetime [ms].

    A plain number (``3.5``) sets every TPC; ``tpc=ms`` (``5=2.0``) sets one TPC and wins over
    plain numbers. TPCs left unset get the last plain number, else 3 ms.

    Raises:
        typer.BadParameter: a value is malformed, not positive, or names a TPC not simulated.
    """
    default = DEFAULT_LIFETIME_MS
    per_tpc: dict[int, float] = {}
    for value in values:
        key, sep, ms = value.partition("=")
        try:
            if sep:
                tpc, lifetime = int(key), float(ms)
            else:
                tpc, lifetime = None, float(key)
        except ValueError:
            raise typer.BadParameter(
                f"{value!r} is neither MS nor TPC=MS (e.g. 3.0 or 5=2.5)", param_hint="--lifetime"
            ) from None
        if not lifetime > 0:
            raise typer.BadParameter(f"{value!r}: lifetime must be > 0 ms", param_hint="--lifetime")
        if tpc is None:
            default = lifetime
        elif tpc not in tpcs:
            raise typer.BadParameter(
                f"{value!r}: TPC {tpc} is not simulated (TPCs: {tpcs})", param_hint="--lifetime"
            )
        else:
            per_tpc[tpc] = lifetime
    return {tpc: per_tpc.get(tpc, default) for tpc in tpcs}


def parse_pairs(values: list[str], option: str, kind: type) -> dict[int, list]:
    """Turn ``KEY=VALUE`` options (``21=150``) into KEY -> [values], repeatable keys allowed.

    Raises:
        typer.BadParameter: a value is not ``INTEGER=NUMBER``.
    """
    out: dict[int, list] = {}
    for value in values:
        key, sep, number = value.partition("=")
        try:
            if not sep:
                raise ValueError
            out.setdefault(int(key), []).append(kind(number))
        except ValueError:
            raise typer.BadParameter(
                f"{value!r} is not KEY=VALUE (e.g. 21=150)", param_hint=option
            ) from None
    return out


def simulate(
    outdir: Annotated[Path, typer.Argument(help="Folder to write the file into (created).")],
    run: Annotated[int, typer.Option(min=0, help="Run number.")] = 1,
    subrun: Annotated[int, typer.Option(min=0, help="Subrun number.")] = 1,
    events: Annotated[int, typer.Option(min=1, help="Number of events.")] = 5,
    geometry: Annotated[
        str, typer.Option(help="'full' (20 fibers per APA) or 'reduced' (4 fibers per APA).")
    ] = "reduced",
    apas: Annotated[
        int | None,
        typer.Option(min=1, max=6, help="APAs to simulate (default: 6 with full, 1 with reduced)."),
    ] = None,
    ticks: Annotated[int, typer.Option(min=1, help="Samples per channel (0.5 us each).")] = 6000,
    lifetime: Annotated[
        list[str] | None,
        typer.Option(help="Electron lifetime in ms: MS for all TPCs, or TPC=MS; repeatable."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    coherent_line: Annotated[
        list[str] | None,
        typer.Option(
            help="FIBER=KHZ: a coherent-noise line on that fiber (repeatable); 'none' for no "
            "line at all; default: random lines on a quarter of the fibers."
        ),
    ] = None,
    noisy: Annotated[
        list[str] | None,
        typer.Option(help="APA=N: N more noisy channels in that APA (repeatable)."),
    ] = None,
    compression: Annotated[
        str | None, typer.Option(help="ADC compression: lzf or gzip (default: none).")
    ] = None,
) -> None:
    """Write a simulated protoDUNE-SP raw file (np04 raw HDF5) and print its path."""
    from p3s.payloads.rawformat import Geometry, raw_filename
    from p3s.payloads.simulate import simulate_file

    if geometry not in ("full", "reduced"):
        raise typer.BadParameter(f"{geometry!r}: use full or reduced", param_hint="--geometry")
    if compression not in (None, "lzf", "gzip"):
        raise typer.BadParameter(f"{compression!r}: use lzf or gzip", param_hint="--compression")
    n_apas = apas if apas is not None else (6 if geometry == "full" else 1)
    geo = Geometry.full(n_apas) if geometry == "full" else Geometry.reduced(n_apas)
    lifetimes = parse_lifetimes(lifetime or [], [int(t) for t in geo.tpcs])
    lines: dict[int, list] | None = None
    if coherent_line:
        given = [v for v in coherent_line if v.lower() != "none"]
        lines = parse_pairs(given, "--coherent-line", float)
    extra = {apa: sum(n) for apa, n in parse_pairs(noisy or [], "--noisy", int).items()}
    outdir.mkdir(parents=True, exist_ok=True)
    path = outdir / raw_filename(run, subrun)
    with console.status(f"simulating {events} event(s), {geo.n_channels} channels x {ticks}"):
        truth = simulate_file(
            path,
            run=run,
            subrun=subrun,
            n_events=events,
            geometry=geo,
            n_ticks=ticks,
            seed=seed,
            lifetimes_ms=lifetimes,
            compression=compression,
            coherent_lines=lines,
            extra_noisy=extra,
        )
    size_mb = path.stat().st_size / 1e6
    taus = ", ".join(f"TPC {t}: {ms:g} ms" for t, ms in truth.lifetimes_ms.items())
    err.print(
        f"[green]wrote[/green] run {run} subrun {subrun}: {events} event(s), "
        f"{geo.n_channels} channels x {ticks} ticks, {size_mb:.1f} MB; lifetimes {taus}"
    )
    console.print(str(path), highlight=False)


def register(app: typer.Typer) -> None:
    """Add the ``simulate`` command to ``app``."""
    app.command("simulate")(simulate)
