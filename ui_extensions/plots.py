"""Plots the payloads do not draw, rendered server-side into PNG bytes and cached.

Each renderer takes plain data (what :mod:`.content` read) and returns PNG bytes; the cache key
is the data itself, so a plot is drawn again only when its numbers changed.
"""

from __future__ import annotations

import hashlib
import io
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from datetime import datetime

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

_CACHE: OrderedDict[str, bytes] = OrderedDict()
_LOCK = threading.Lock()
_CACHE_SIZE = 256
#: Drawing is serialised: matplotlib's mathtext parser (log-axis tick labels) is not
#: thread-safe, and the app renders plots in a thread pool.
_DRAW_LOCK = threading.Lock()


def cached_png(kind: str, data: object, draw: Callable[[], Figure]) -> bytes:
    """The PNG of ``draw()``, reused while ``kind`` and ``data`` stay the same."""
    key = hashlib.sha256(f"{kind}|{data!r}".encode()).hexdigest()
    with _LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    with _DRAW_LOCK:
        png = _png(draw())
    with _LOCK:
        _CACHE[key] = png
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return png


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=90)
    return out.getvalue()


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def lifetime_vs_time(label: str, points: Sequence[tuple[str, float, float]]) -> bytes:
    """Electron lifetime (ms) with its error against time, for one TPC."""

    def draw() -> Figure:
        fig = Figure(figsize=(6.4, 3.2))
        ax = fig.add_subplot()
        if points:
            times = [_time(t) for t, _, _ in points]
            ax.errorbar(times, [v for _, v, _ in points], yerr=[e for _, _, e in points], fmt="o")
            fig.autofmt_xdate()
        else:
            ax.text(0.5, 0.5, "no lifetime measured", ha="center", transform=ax.transAxes)
        ax.set_title(f"{label}: electron lifetime")
        ax.set_ylabel("lifetime [ms]")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        return fig

    return cached_png("lifetime", (label, tuple(points)), draw)


def noisy_trend(points: Sequence[tuple[int, int, int]]) -> bytes:
    """Noisy and dead channel counts per run."""

    def draw() -> Figure:
        fig = Figure(figsize=(6.4, 3.2))
        ax = fig.add_subplot()
        # Side-by-side bars from zero: equal counts stay visible (markers hid one another),
        # and one run does not stretch a single value over the whole axis.
        x = np.arange(len(points))
        ax.bar(x - 0.2, [n for _, n, _ in points], 0.4, label="noisy")
        ax.bar(x + 0.2, [d for _, _, d in points], 0.4, label="dead")
        step = max(1, -(-len(points) // 12))  # at most 12 run labels
        ax.set_xticks(x[::step], [str(r) for r, _, _ in points][::step])
        pad = max(0.0, (6 - len(points)) / 2)  # a few runs keep bars of a sensible width
        ax.set_xlim(-0.5 - pad, len(points) - 0.5 + pad)
        top = max([max(n, d) for _, n, d in points], default=0)
        ax.set_ylim(0, top * 1.15 + 1)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("run")
        ax.set_ylabel("channels")
        ax.set_title("noisy and dead channels per run")
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
        ax.grid(alpha=0.3)
        fig.tight_layout()
        return fig

    return cached_png("noisy-trend", tuple(points), draw)


def channel_map(title: str, rows: Sequence[dict[str, str]]) -> bytes:
    """Dead (black) and noisy (red) channels per APA and plane, wire along x.

    Args:
        rows: the TPC monitor's ``channels.csv`` rows (apa, plane, wire, dead, noisy).
    """
    cells: dict[tuple[int, int], dict[int, int]] = {}
    for row in rows:
        status = 2 if row["dead"] == "True" else 1 if row["noisy"] == "True" else 0
        cells.setdefault((int(row["apa"]), int(row["plane"])), {})[int(row["wire"])] = status
    keys = sorted(cells)

    def draw() -> Figure:
        fig = Figure(figsize=(6.4, 0.6 + 0.5 * max(1, len(keys))))
        ax = fig.add_subplot()
        width = max((max(c) + 1 for c in cells.values()), default=1)
        grid = [[cells[k].get(w, -1) for w in range(width)] for k in keys] or [[-1]]
        cmap = ListedColormap(["#eeeeee", "#9ccc65", "#e53935", "#212121"])
        ax.imshow(
            [[v + 1 for v in line] for line in grid],
            aspect="auto",
            cmap=cmap,
            vmin=0,
            vmax=3,
            interpolation="nearest",
        )
        ax.set_yticks(range(len(keys)), [f"APA {a} {'UVX'[p]}" for a, p in keys])
        ax.set_xlabel("wire (green: good, red: noisy, black: dead)")
        ax.set_title(title)
        fig.tight_layout()
        return fig

    return cached_png("channel-map", (title, sorted(cells.items())), draw)


QUALITY_COLOURS = {"good": "#43a047", "medium": "#fbc02d", "bad": "#e53935", None: "#eeeeee"}


def overlay(
    title: str,
    xlabel: str,
    edges: np.ndarray,
    values: np.ndarray,
    label: str,
    reference: np.ndarray | None = None,
    reference_label: str = "",
    log: bool = False,
) -> bytes:
    """A 1-D histogram as steps and, where given, the reference run's overlaid (dashed),
    scaled to the same integral so shapes compare; each labelled with its run."""

    def draw() -> Figure:
        fig = Figure(figsize=(6.4, 3.2))
        ax = fig.add_subplot()
        ax.stairs(values, edges, label=label, lw=1.2)
        if reference is not None:
            scale = values.sum() / reference.sum() if reference.sum() > 0 else 1.0
            ax.stairs(reference * scale, edges, label=reference_label, lw=1.0, ls="--",
                      color="k")  # fmt: skip
        if log and np.any(values > 0):
            ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_title(title, fontsize="medium")
        ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        return fig

    data = (title, label, reference_label, edges.tobytes(), values.tobytes(),
            None if reference is None else reference.tobytes(), log)  # fmt: skip
    return cached_png("overlay", data, draw)


def trend(title: str, unit: str, places: dict[str, list[list[float]]]) -> bytes:
    """One key number against run, a line per place (APA/TPC, plane, fiber)."""

    def draw() -> Figure:
        fig = Figure(figsize=(6.4, 3.2))
        ax = fig.add_subplot()
        for place, points in sorted(places.items()):
            ax.plot([p[0] for p in points], [p[1] for p in points], "o-", ms=3, label=place)
        if not places:
            ax.text(0.5, 0.5, "no value", ha="center", transform=ax.transAxes)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("run")
        ax.set_ylabel(unit)
        ax.set_title(title, fontsize="medium")
        if 0 < len(places) <= 12:
            ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
        ax.grid(alpha=0.3)
        fig.tight_layout()
        return fig

    return cached_png("trend", (title, unit, sorted((k, str(v)) for k, v in places.items())), draw)


def quality_strip(runs: Sequence[int], areas: dict[str, list[str | None]]) -> bytes:
    """The quality flag per run (columns) and area (rows: the whole run first): green good,
    yellow medium, red bad, grey not evaluated."""
    names = list(areas)

    def draw() -> Figure:
        fig = Figure(figsize=(max(6.4, 0.25 * len(runs) + 2), 0.8 + 0.3 * max(1, len(names))))
        ax = fig.add_subplot()
        for row, area in enumerate(names):
            for col, flag in enumerate(areas[area]):
                ax.add_patch(_cell(col, row, QUALITY_COLOURS.get(flag, "#eeeeee")))
        ax.set_xlim(-0.5, max(1, len(runs)) - 0.5)
        ax.set_ylim(len(names) - 0.5, -0.5)
        step = max(1, -(-len(runs) // 25))
        ax.set_xticks(range(0, len(runs), step), [str(r) for r in runs][::step], rotation=90,
                      fontsize="x-small")  # fmt: skip
        ax.set_yticks(range(len(names)), names, fontsize="small")
        ax.set_title("quality flag per run (green good, yellow medium, red bad)", fontsize="medium")
        fig.tight_layout()
        return fig

    return cached_png("quality-strip", (tuple(runs), sorted(areas.items())), draw)


def _cell(x: float, y: float, colour: str):
    from matplotlib.patches import Rectangle

    return Rectangle((x - 0.45, y - 0.45), 0.9, 0.9, color=colour)
