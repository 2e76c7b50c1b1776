"""Steps of the DQM chain workflow (run through ``p3s-dqm-step``; no Prefect import).

``dataprep``
    Open ``$P3S_RAW`` (np04 raw HDF5) and read every byte of it, copy it to ``$P3S_STAGED``
    (a temporary name, then a rename), and write ``$P3S_PREP``: run, subrun, events and, per
    plane, the median pedestal and noise (ADC counts) and the dead and noisy channel counts of
    the first ``$P3S_NEVENTS`` events (default 1).
``payload NAME VAR``
    Run DQM payload NAME on ``$P3S_STAGED`` (``--events $P3S_NEVENTS``), products under
    ``$P3S_OUTPUT_DIR/runRRRRRR/SSSS/NAME``; write the payload's summary and products folder
    as JSON to the file named by ``$VAR``.
``summary``
    Combine ``$P3S_PREP``, ``$EVD_RESULT`` and ``$TPC_RESULT`` into ``$DQM_SUMMARY``.

Exit codes follow ``p3s.payloads.runner``: 2 usage, 65 corrupt input, 66 no input, 73 the
output cannot be written.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

# Exit codes of p3s.payloads.runner (sysexits.h); the payload modules are imported only by the
# steps that need them, so that the summary step starts fast.
EX_USAGE, EX_DATAERR, EX_NOINPUT, EX_CANTCREAT = 2, 65, 66, 73


PLANES = {0: "U", 1: "V", 2: "X"}


class StepError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _env(name: str) -> str:
    value = os.environ.get(name, "")
    if not value:
        raise StepError(f"{name} is not set", EX_USAGE)
    return value


def _plain(value: Any) -> Any:
    """numpy scalars and arrays as plain JSON values."""
    return value.tolist() if hasattr(value, "tolist") else str(value)


def _write_json(path: str, data: dict[str, Any]) -> None:
    target = Path(path)
    temp = target.with_name(f".{target.name}.tmp")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        temp.write_text(json.dumps(data, indent=2, default=_plain))
        temp.replace(target)
    except OSError as exc:
        raise StepError(f"cannot write {target}: {exc}", EX_CANTCREAT) from exc


def _read_json(name: str) -> dict[str, Any]:
    path = Path(_env(name))
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise StepError(f"{name}: cannot read {path}: {exc}", EX_NOINPUT) from exc


def _events() -> int | None:
    text = os.environ.get("P3S_NEVENTS", "")
    return int(text) if text.isdigit() and int(text) > 0 else None


def dataprep() -> None:
    import numpy as np
    from p3s.payloads.dataprep import flag_dead, flag_noisy, pedestal_and_rms
    from p3s.payloads.rawformat import open_raw

    raw_path, staged = Path(_env("P3S_RAW")), Path(_env("P3S_STAGED"))
    if not raw_path.is_file():
        raise StepError(f"{raw_path}: no such raw file", EX_NOINPUT)
    n_events = _events() or 1
    planes: dict[str, dict[str, list[float]]] = {
        p: {"pedestal": [], "rms": [], "dead": [], "noisy": []} for p in PLANES.values()
    }
    with open_raw(raw_path) as raw:
        raw.verify_readable()
        plane_of_row = raw.geometry.plane
        for i in range(min(n_events, raw.n_events)):
            for _, rows, adc in raw.iter_fibers(i):
                plane = plane_of_row[rows]
                ped, rms = pedestal_and_rms(adc)
                dead = flag_dead(rms, plane)
                noisy = flag_noisy(rms, plane, dead=dead)
                for code, label in PLANES.items():
                    sel = plane == code
                    planes[label]["pedestal"].extend(ped[sel].tolist())
                    planes[label]["rms"].extend(rms[sel & ~dead].tolist())
                    planes[label]["dead"].append(int(dead[sel].sum()))
                    planes[label]["noisy"].append(int(noisy[sel].sum()))
        info = {"run": raw.run, "subrun": raw.subrun, "events": raw.n_events}
    temp = staged.with_name(f".{staged.name}.tmp")
    try:
        staged.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(raw_path, temp)
        temp.replace(staged)
    except OSError as exc:
        raise StepError(f"cannot stage {raw_path} to {staged}: {exc}", EX_CANTCREAT) from exc
    summary = {
        label: {
            "pedestal_median_adc": float(np.median(v["pedestal"])) if v["pedestal"] else None,
            "noise_median_adc": float(np.median(v["rms"])) if v["rms"] else None,
            "dead_channels": int(sum(v["dead"])),
            "noisy_channels": int(sum(v["noisy"])),
        }
        for label, v in planes.items()
    }
    _write_json(
        _env("P3S_PREP"),
        {"input": str(raw_path), "staged": str(staged), **info, "planes": summary},
    )
    print(f"dataprep: run {info['run']} subrun {info['subrun']}, {raw_path.name} -> {staged}")


def payload(name: str, variable: str) -> None:
    from p3s.payloads.runner import run_payload

    staged, outbox = _env("P3S_STAGED"), _env("P3S_OUTPUT_DIR")
    if not Path(staged).is_file():
        raise StepError(f"{staged}: no such raw file", EX_NOINPUT)
    result, outdir, paths = run_payload(name, staged, outbox, n_events=_events())
    _write_json(
        _env(variable),
        {
            "payload": name,
            "run": result.run,
            "subrun": result.subrun,
            "products": str(outdir),
            "files": sorted(p.name for p in paths),
            "summary": result.summary,
        },
    )
    print(f"{name}: {len(paths)} products in {outdir}")


def summary() -> None:
    prep = _read_json("P3S_PREP")
    results = {r["payload"]: r for r in (_read_json("EVD_RESULT"), _read_json("TPC_RESULT"))}
    _write_json(
        _env("DQM_SUMMARY"),
        {
            "input": prep["input"],
            "run": prep["run"],
            "subrun": prep["subrun"],
            "events": prep["events"],
            "dataprep": prep["planes"],
            "payloads": {
                name: {"products": r["products"], "files": len(r["files"])}
                for name, r in results.items()
            },
        },
    )
    print(f"summary: run {prep['run']} subrun {prep['subrun']}: {', '.join(sorted(results))}")


def main(argv: list[str]) -> int:
    try:
        if argv[:1] == ["dataprep"] and len(argv) == 1:
            dataprep()
        elif argv[:1] == ["payload"] and len(argv) == 3:
            payload(argv[1], argv[2])
        elif argv[:1] == ["summary"] and len(argv) == 1:
            summary()
        else:
            print("usage: p3s-dqm-step dataprep | payload NAME VAR | summary", file=sys.stderr)
            return EX_USAGE
    except StepError as exc:
        print(f"p3s-dqm-step: {exc}", file=sys.stderr)
        return exc.code
    except ValueError as exc:  # RawFormatError is a ValueError: the input is corrupt
        print(f"p3s-dqm-step: {exc}", file=sys.stderr)
        return EX_DATAERR
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
