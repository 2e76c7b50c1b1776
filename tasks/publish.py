"""Publishing what a DQM flow found: catalog rows, Prefect artifacts, the finished event.

- :func:`record_result` writes the DQM catalog (idempotent: a retried run replaces its rows).
- :func:`publish_artifacts` creates one markdown artifact per run: the link to the file's page
  in the content app (``settings.ui_url``), the payload's key numbers, for the purity monitor
  one row per TPC (lifetime and error in ms, tracks) as p3s's purity page listed them, and the
  products. Its key is ``<payload>-summary-runRRRRRR-SSSS`` (lowercase and dashes), so each
  run/subrun has one artifact history per payload. One artifact, not three: each costs an API
  request and two events.
- :func:`emit_finished` emits ``p3s.dqm.finished`` for the file life cycle and transport.
- :func:`emit_values` emits ``p3s.dqm.value`` per alarmed quantity (electron lifetime per TPC,
  noisy channels per APA plane), the value also as a sortable label that the alarms'
  thresholds match (:mod:`p3s.alarms.ranges`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from prefect.artifacts import create_markdown_artifact
from prefect.events import emit_event

from p3s.alarms.ranges import DECIMALS, sortable
from p3s.dqm.catalog import ProductInfo, open_catalog
from p3s.dqm.links import page_url
from p3s.system.settings import get_settings

FINISHED_EVENT = "p3s.dqm.finished"
VALUE_EVENT = "p3s.dqm.value"


def artifact_key(kind: str, payload: str, run: int, subrun: int) -> str:
    """An artifact key such as ``purity-table-run000042-0007`` (lowercase letters, digits, -)."""
    return f"{payload.replace('_', '-')}-{kind}-run{run:06d}-{subrun:04d}".lower()


def record_result(
    payload: str,
    *,
    file_name: str,
    file_url: str,
    run: int,
    subrun: int,
    outcome: str,
    reason: str,
    flow_run_id: str,
    started: datetime,
    summary: Mapping[str, Any] | None = None,
    products: Sequence[ProductInfo] = (),
    file_size: int | None = None,
    file_adler32: str | None = None,
) -> None:
    """Record one payload's result for one file in the DQM catalog (``settings.catalog``).

    ``file_size`` (bytes) and ``file_adler32`` describe the raw file when it was staged in.
    """
    summary = summary or {}
    open_catalog().record_payload(
        file_name,
        payload,
        file_url=file_url,
        run=run,
        subrun=subrun,
        outcome=outcome,
        reason=reason,
        flow_run_id=flow_run_id,
        started=started,
        summary=_jsonable(summary) if summary else None,
        purity=summary.get("purity", []),
        planes=summary.get("planes", []),
        products=products,
        file_size=file_size,
        file_adler32=file_adler32,
    )


def _jsonable(value: Any) -> Any:
    """``value`` as plain JSON types, NaN and infinities as None (every database stores it)."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, bool | int | str) or value is None:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    try:
        return _jsonable(value.item())  # numpy scalars
    except AttributeError:
        return json.loads(json.dumps(value, default=str))


def _number(value: Any) -> str:
    if isinstance(value, float):
        return "n/a" if not math.isfinite(value) else f"{value:.4g}"
    return str(value)


def _key_numbers(payload: str, summary: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The lines of the summary table: scalars first, then the payload's own highlights."""
    lines = [
        (key.replace("_", " "), _number(value))
        for key, value in summary.items()
        if isinstance(value, int | float | str) and not isinstance(value, bool)
    ]
    if payload == "tpc_monitor":
        for plane, rms in summary.get("mean_rms", {}).items():
            lines.append((f"mean RMS plane {plane} (ADC)", _number(rms)))
        for fiber, freqs in summary.get("coherent_lines_khz", {}).items():
            lines.append((f"coherent lines fiber {fiber} (kHz)", ", ".join(map(_number, freqs))))
        for key, value in summary.get("pds", {}).items():
            lines.append((f"PDS {key.replace('_', ' ')}", _number(value)))
    elif payload == "beam":
        for pid, count in summary.get("pid_counts", {}).items():
            lines.append((f"particles {pid}", _number(count)))
    elif payload == "evdisplay":
        lines.append(("images", str(len(summary.get("images", [])))))
    return lines


def summary_markdown(
    payload: str,
    *,
    file_name: str,
    run: int,
    subrun: int,
    summary: Mapping[str, Any],
    products: Sequence[ProductInfo],
    outbox_url: str,
    page: str | None = None,
) -> str:
    """The markdown summary of one payload on one file: its content page (``page``, a URL),
    key numbers, purity, products."""
    out = [f"# {payload} · run {run} subrun {subrun}", ""]
    if page:
        out += [f"[{payload} run {run} subrun {subrun}: shifters' page]({page})", ""]
    out += [
        f"File `{file_name}`; products in `{outbox_url}`.",
        "",
        "| quantity | value |",
        "|---|---|",
    ]
    out += [f"| {name} | {value} |" for name, value in _key_numbers(payload, summary)]
    if summary.get("purity"):
        out += ["", "| TPC | lifetime (ms) | error (ms) | tracks |", "|---|---|---|---|"]
        for row in summary["purity"]:
            out.append(
                f"| {row['tpc']} | {_number(row.get('lifetime_ms'))} | "
                f"{_number(row.get('error_ms'))} | {row.get('count', 0)} |"
            )
    if summary.get("planes"):
        out += ["", "| APA | plane | channels | dead | noisy | mean RMS (ADC) |"]
        out += ["|---|---|---|---|---|---|"]
        for row in summary["planes"]:
            out.append(
                f"| {row['apa']} | {row.get('plane_name', row.get('plane'))} | "
                f"{row['n_channels']} | {row['n_dead']} | {row['n_noisy']} | "
                f"{_number(row.get('mean_rms'))} |"
            )
    out += ["", "| product | bytes | adler32 |", "|---|---|---|"]
    out += [f"| [{p.name}]({p.url}) | {p.size} | {p.adler32} |" for p in products]
    return "\n".join(out) + "\n"


def publish_artifacts(
    payload: str,
    *,
    file_name: str,
    run: int,
    subrun: int,
    summary: Mapping[str, Any],
    products: Sequence[ProductInfo],
    outbox_url: str,
) -> None:
    """Create the run's one artifact: the markdown summary with the link to its content page."""
    create_markdown_artifact(
        summary_markdown(
            payload,
            file_name=file_name,
            run=run,
            subrun=subrun,
            summary=summary,
            products=products,
            outbox_url=outbox_url,
            page=page_url(get_settings(), payload, run, subrun),
        ),
        key=artifact_key("summary", payload, run, subrun),
        description=f"DQM {payload} of {file_name}",
    )


def emit_finished(
    payload: str,
    *,
    file_url: str,
    file_name: str,
    outcome: str,
    reason: str,
    run: int,
    subrun: int,
    outbox_url: str | None = None,
) -> None:
    """Emit ``p3s.dqm.finished`` for one payload and file (resource and payload: contract)."""
    resource = {
        "prefect.resource.id": f"p3s.dqm.{payload}.{file_name}",
        "p3s.file.url": file_url,
        "p3s.file.name": file_name,
        "p3s.payload": payload,
        "p3s.outcome": outcome,
    }
    if outbox_url and outcome == "completed":
        resource["p3s.outbox.url"] = outbox_url
    emit_event(
        event=FINISHED_EVENT,
        resource=resource,
        payload={"reason": reason, "run": run, "subrun": subrun},
    )


def dqm_values(payload: str, summary: Mapping[str, Any]) -> list[tuple[str, str, float]]:
    """The alarmed quantities of one summary: (quantity, where, value), finite values only."""
    values: list[tuple[str, str, float]] = []
    if payload == "purity":
        for row in summary.get("purity", []):
            values.append(("lifetime_ms", f"TPC {row['tpc']}", row.get("lifetime_ms")))
    elif payload == "tpc_monitor":
        for row in summary.get("planes", []):
            plane = row.get("plane_name", row.get("plane"))
            values.append(("noisy_channels", f"APA {row['apa']} plane {plane}", row["n_noisy"]))
    return [
        (quantity, where, float(value))
        for quantity, where, value in values
        if value is not None and math.isfinite(float(value))
    ]


def emit_values(
    payload: str, *, file_name: str, run: int, subrun: int, summary: Mapping[str, Any]
) -> None:
    """Emit ``p3s.dqm.value`` for each alarmed quantity of one payload's summary."""
    for quantity, where, value in dqm_values(payload, summary):
        place = where.lower().replace(" ", "-")
        emit_event(
            event=VALUE_EVENT,
            resource={
                "prefect.resource.id": f"p3s.dqm.value.{quantity}.{file_name}.{place}",
                "prefect.resource.name": f"{quantity} {where} of {file_name}",
                "p3s.quantity": quantity,
                "p3s.value": _number(value),
                "p3s.value.sortable": sortable(value, DECIMALS[quantity]),
                "p3s.file.name": file_name,
                "p3s.run": str(run),
                "p3s.payload": payload,
            },
            payload={
                "quantity": quantity,
                "where": where,
                "value": value,
                "run": run,
                "subrun": subrun,
                "file": file_name,
            },
        )
