"""The DQM flows: one per payload type, each run on one raw file, one flow run per payload.

``dqm-tpc-monitor``, ``dqm-purity``, ``dqm-evdisplay`` and ``dqm-beam`` take the claimed raw
file's URL (``file_url``), what the inbox found of it (``run``, ``subrun``, ``datatype``: the
``p3s.file.arrived`` event's, so nothing is parsed again) and an optional event limit
(``n_events``, p3s's ``P3S_NEVENTS``). Each run does the whole job of its payload on its file:

1. stage the file in (size and adler32 checked once; transient storage failures retried);
2. run its payload in-process and stage every product out to
   ``settings.outbox/runRRRRRR/SSSS/PAYLOAD`` (atomically);
3. record the result in the DQM catalog, publish artifacts, emit ``p3s.dqm.value`` (the values
   alarms watch) and ``p3s.dqm.finished`` (for alarms and sites with their own transport);
4. settle the raw file's life cycle (used/ once every payload of its data type reported,
   quarantine/ if any found it corrupt) and replicate its products: tasks with their own
   retries, not flow runs of their own.

A bad input (corrupt, truncated, wrong version, not HDF5) or a payload error fails the run once,
with a message naming the fault; its outcome still settles the file's life cycle.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from p3s.payloads.paths import products_url
from p3s.payloads.rawformat import RawFormatError
from p3s.tasks.analyse import analyse
from p3s.tasks.publish import emit_finished, emit_values, publish_artifacts, record_result
from p3s.tasks.quality import evaluate_quality
from p3s.tasks.replicate import replicate_outputs
from p3s.tasks.settle import settle_file
from p3s.tasks.stage import stage_in, stage_out
from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.states import Completed, Failed, State

from p3s.files.names import RawFile
from p3s.files.storage import FileVanished, StorageError
from p3s.system.settings import get_settings


def run_dqm(
    payload: str,
    file_url: str,
    n_events: int | None,
    run: int | None = None,
    subrun: int | None = None,
    datatype: str | None = None,
) -> State[Any]:
    """Stage in, analyse, stage out, record, publish, settle, replicate: one payload's job."""
    logger = get_run_logger()
    raw = RawFile.from_params(file_url, run, subrun, datatype)
    started = datetime.now(UTC)
    scratch = get_settings().scratch / str(flow_run.id)
    report = {"payload": payload, "raw": raw, "started": started}
    try:
        staged = stage_in(raw.url, scratch / "in")
        result = analyse(payload, staged.path, scratch / "out", n_events)
        raw = replace(raw, run=result.run, subrun=result.subrun)
        outbox = products_url(get_settings().outbox, result.run, result.subrun, payload)
        products = stage_out(result.products, outbox)
    except RawFormatError as exc:
        message = f"corrupt input {raw.name}: {exc.fault}"
        return _report_failure(**report, outcome="corrupt", message=message)
    except FileVanished as exc:
        return _report_failure(**report, outcome="failed", message=str(exc))
    except StorageError as exc:
        message = f"storage failed after retries: {exc}"
        return _report_failure(**report, outcome="failed", message=message)
    except Exception as exc:
        logger.exception("payload %s failed on %s", payload, raw.name)
        message = f"payload {payload} failed on {raw.name}: {type(exc).__name__}: {exc}"
        return _report_failure(**report, outcome="failed", message=message)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    message = f"{payload}: {len(products)} products of {raw.name} in {outbox}"
    record_result(
        payload,
        file_name=raw.name,
        file_url=raw.url,
        run=raw.run,
        subrun=raw.subrun,
        outcome="completed",
        reason=message,
        flow_run_id=str(flow_run.id),
        started=started,
        summary=result.summary,
        products=products,
        file_size=staged.size,
        file_adler32=staged.adler32,
    )
    evaluate_quality(payload, file_name=raw.name)
    publish_artifacts(
        payload,
        file_name=raw.name,
        run=raw.run,
        subrun=raw.subrun,
        summary=result.summary,
        products=products,
        outbox_url=outbox,
    )
    emit_values(payload, file_name=raw.name, run=raw.run, subrun=raw.subrun, summary=result.summary)
    emit_finished(
        payload,
        file_url=raw.url,
        file_name=raw.name,
        outcome="completed",
        reason=message,
        run=raw.run,
        subrun=raw.subrun,
        outbox_url=outbox,
    )
    settle_file(raw.name, payload, "completed", message, raw.datatype)
    try:
        replica = replicate_outputs(outbox, {p.name: p.adler32 for p in products})
    except Exception as exc:
        failure = f"{message}; replicating them failed after retries: {exc}"
        logger.error(failure)
        return Failed(name="TransportFailed", message=failure)
    logger.info("%s; replicated to %s", message, replica.dest)
    return Completed(message=message, data=outbox)


def _report_failure(
    *, payload: str, raw: RawFile, started: datetime, outcome: str, message: str
) -> State[Any]:
    """Record, announce and settle a failed run; the returned state fails it once (no flow
    retries)."""
    get_run_logger().error(message)
    record_result(
        payload,
        file_name=raw.name,
        file_url=raw.url,
        run=raw.run,
        subrun=raw.subrun,
        outcome=outcome,
        reason=message,
        flow_run_id=str(flow_run.id),
        started=started,
    )
    emit_finished(
        payload,
        file_url=raw.url,
        file_name=raw.name,
        outcome=outcome,
        reason=message,
        run=raw.run,
        subrun=raw.subrun,
    )
    settle_file(raw.name, payload, outcome, message, raw.datatype)
    if outcome == "corrupt":
        return Failed(name="Corrupt", message=message)
    return Failed(message=message)


def _run_name() -> str:
    url = str(flow_run.parameters.get("file_url", ""))
    return f"{flow_run.flow_name}: {url.rpartition('/')[2]}"


_FLOW_OPTIONS: dict[str, Any] = {
    "flow_run_name": _run_name,
    "persist_result": False,
    "validate_parameters": True,
    "retries": 0,
}


@flow(name="dqm-tpc-monitor", **_FLOW_OPTIONS)
def dqm_tpc_monitor(
    file_url: str,
    n_events: int | None = None,
    run: int | None = None,
    subrun: int | None = None,
    datatype: str | None = None,
) -> State[Any]:
    """TPC monitor: pedestals, noise, dead/noisy channels, FFTs per fiber, photon detectors."""
    return run_dqm("tpc_monitor", file_url, n_events, run, subrun, datatype)


@flow(name="dqm-purity", **_FLOW_OPTIONS)
def dqm_purity(
    file_url: str,
    n_events: int | None = None,
    run: int | None = None,
    subrun: int | None = None,
    datatype: str | None = None,
) -> State[Any]:
    """Purity monitor: electron lifetime per TPC from cosmic-muon tracks."""
    return run_dqm("purity", file_url, n_events, run, subrun, datatype)


@flow(name="dqm-evdisplay", **_FLOW_OPTIONS)
def dqm_evdisplay(
    file_url: str,
    n_events: int | None = None,
    run: int | None = None,
    subrun: int | None = None,
    datatype: str | None = None,
) -> State[Any]:
    """Event display and data preparation: wire x time images per APA and plane."""
    return run_dqm("evdisplay", file_url, n_events, run, subrun, datatype)


@flow(name="dqm-beam", **_FLOW_OPTIONS)
def dqm_beam(
    file_url: str,
    n_events: int | None = None,
    run: int | None = None,
    subrun: int | None = None,
    datatype: str | None = None,
) -> State[Any]:
    """Beam instrumentation monitor: momentum, time of flight, Cherenkov, beam profile."""
    return run_dqm("beam", file_url, n_events, run, subrun, datatype)


DQM_FLOWS = {
    "tpc_monitor": dqm_tpc_monitor,
    "purity": dqm_purity,
    "evdisplay": dqm_evdisplay,
    "beam": dqm_beam,
}
"""Each payload's flow."""
