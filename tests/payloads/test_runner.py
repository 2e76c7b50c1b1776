"""python -m p3s.payloads: products under run/subrun/NAME, sysexits codes, the p3s stand-in
scripts run with the environment of the reference jobs (CERN paths mapped to local ones)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from p3s.payloads import runner
from p3s.payloads.products import products_dir
from p3s.payloads.rawformat import Geometry, raw_filename
from p3s.payloads.simulate import simulate_file

from p3s.jobs.policy import map_prefix
from p3s.system.settings import P3S_AFS_INPUTS, P3S_EOS_AREA, PACKAGED_PAYLOADS
from tests.unit.test_jobs import REFERENCE_JOBS

RUN, SUBRUN = 7, 2
FILE_NAME = raw_filename(RUN, SUBRUN)


def require(name: str) -> None:
    """Skip while payload ``name`` is not written yet; an existing module must import."""
    if importlib.util.find_spec(f"p3s.payloads.{name}") is None:
        pytest.skip(f"p3s.payloads.{name} does not exist yet")


@pytest.fixture(scope="module")
def raw_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small simulated file: 1 APA, 2 fibers, 1000 ticks, 2 events (one with beam)."""
    path = tmp_path_factory.mktemp("inbox") / FILE_NAME
    simulate_file(
        path,
        run=RUN,
        subrun=SUBRUN,
        n_events=2,
        geometry=Geometry.reduced(1, 2),
        n_ticks=1000,
        seed=5,
        beam_fraction=1.0,
    )
    return path


def check_products(outbox: Path, name: str) -> dict[str, Any]:
    """Assert the products of ``name`` are under outbox/run/subrun/name; return summary.json."""
    folder = products_dir(outbox, RUN, SUBRUN, name)
    assert folder == outbox / f"run{RUN:06d}" / f"{SUBRUN:04d}" / name
    summary = json.loads((folder / "summary.json").read_text())
    assert (summary["payload"], summary["run"], summary["subrun"]) == (name, RUN, SUBRUN)
    assert f"{name}.root" in summary["products"]
    assert all((folder / product).is_file() for product in summary["products"])
    return summary


@pytest.mark.parametrize("name", runner.PAYLOADS)
def test_run_writes_products_under_run_subrun_name(name, raw_path, tmp_path, capsys):
    require(name)
    assert runner.main(["run", name, str(raw_path), str(tmp_path), "--events", "1"]) == 0
    check_products(tmp_path, name)
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{name}: run {RUN} subrun {SUBRUN}")
    assert out[1] == f"products: {products_dir(tmp_path, RUN, SUBRUN, name)}"


def test_list_prints_every_payload(capsys):
    assert runner.main(["list"]) == 0
    assert capsys.readouterr().out.split() == list(runner.PAYLOADS)


def test_corrupt_file_exits_65_naming_file_and_fault(raw_path, tmp_path):
    bad = tmp_path / FILE_NAME
    data = bytearray(raw_path.read_bytes())
    data[:4096] = bytes(range(256)) * 16  # garbage over the superblock
    bad.write_bytes(bytes(data))
    argv = [sys.executable, "-m", "p3s.payloads", "run", "beam", str(bad), str(tmp_path / "out")]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == runner.EX_DATAERR == 65
    assert done.stderr.startswith(f"error: {bad}: ") and "not an HDF5 file" in done.stderr
    assert not (tmp_path / "out").exists()


def test_missing_file_exits_66(tmp_path, capsys):
    missing = tmp_path / FILE_NAME
    assert runner.main(["run", "beam", str(missing), str(tmp_path)]) == runner.EX_NOINPUT == 66
    assert f"error: {missing}: no such raw file" in capsys.readouterr().err


def test_unknown_payload_exits_2_listing_the_payloads(capsys):
    with pytest.raises(SystemExit) as exit_info:
        runner.main(["run", "lifetime", "in.h5", "out"])
    assert exit_info.value.code == runner.EX_USAGE == 2
    listed = ", ".join(runner.PAYLOADS)
    assert f"unknown payload 'lifetime'; choose one of: {listed}" in capsys.readouterr().err


def test_events_must_be_a_positive_integer(capsys):
    with pytest.raises(SystemExit) as exit_info:
        runner.main(["run", "beam", "in.h5", "out", "--events", "0"])
    assert exit_info.value.code == 2
    assert "'0' is not a positive integer" in capsys.readouterr().err


def reference_job(name: str, data: Path) -> tuple[Path, dict[str, str]]:
    """Payload path and env of a reference job, site paths mapped as the p3s-job flow does."""
    (job,) = json.loads((REFERENCE_JOBS / name).read_text())
    path_map = {P3S_AFS_INPUTS: str(PACKAGED_PAYLOADS / "p3s-inputs"), P3S_EOS_AREA: str(data)}
    env = {key: map_prefix(value, path_map) for key, value in job["env"].items()}
    return Path(map_prefix(job["payload"], path_map)), env


def run_wrapper(job_file: str, data: Path, raw_path: Path) -> subprocess.CompletedProcess[str]:
    """Run a reference job's stand-in script on a copy of ``raw_path`` in data/input."""
    payload, env = reference_job(job_file, data)
    (data / "input").mkdir(parents=True, exist_ok=True)
    (data / "input" / FILE_NAME).write_bytes(raw_path.read_bytes())
    env.update(P3S_INPUT_FILE=FILE_NAME, P3S_PYTHON=sys.executable)
    assert os.access(payload, os.X_OK), f"{payload} is not executable"
    return subprocess.run(
        [str(payload)], env={**os.environ, **env}, capture_output=True, text=True, timeout=60
    )


def test_evdisp_main_writes_the_event_display_into_the_evdisp_dir(raw_path, tmp_path):
    require("evdisplay")
    done = run_wrapper("evdisp_main.json", tmp_path / "data", raw_path)
    assert done.returncode == 0, done.stderr
    assert f"input {tmp_path}/data/input/{FILE_NAME}" in done.stdout
    check_products(tmp_path / "data" / "evdisp", "evdisplay")
    assert not (tmp_path / "data" / "output").exists()


def test_monitor_main_resolves_dirs_under_p3s_data(raw_path, tmp_path):
    require("tpc_monitor")
    done = run_wrapper("monitor_main.json", tmp_path / "data", raw_path)
    assert done.returncode == 0, done.stderr
    assert f"input {tmp_path}/data/input/{FILE_NAME}" in done.stdout
    assert f"outbox {tmp_path}/data/monitor (3 events)" in done.stdout  # P3S_NEVENTS of the job
    check_products(tmp_path / "data" / "monitor", "tpc_monitor")


def test_wrapper_passes_a_corrupt_input_exit_code_through(tmp_path):
    require("tpc_monitor")
    bad = tmp_path / "data" / "input" / FILE_NAME
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not hdf5" * 100)
    payload, env = reference_job("monitor_main.json", tmp_path / "data")
    env.update(P3S_INPUT_FILE=str(bad), P3S_PYTHON=sys.executable)
    done = subprocess.run(
        [str(payload)], env={**os.environ, **env}, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 65 and f"error: {bad}: " in done.stderr
