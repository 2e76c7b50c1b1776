"""The pure parts of the p3s-job flow: environment, site paths, final states."""

from __future__ import annotations

import sys
from pathlib import Path

from p3s.flows.job import final_state, job_environment

from p3s.jobs.model import load_jobs
from p3s.jobs.process import PayloadOutcome
from p3s.system.settings import P3S_AFS_INPUTS, P3S_EOS_AREA, PACKAGED_PAYLOADS, Settings
from tests.unit.test_jobs import REFERENCE_JOBS


def outcome(code: int = 0, timed_out: bool = False) -> PayloadOutcome:
    return PayloadOutcome(
        exit_code=code, timed_out=timed_out, duration_s=1.0, stdout_path="o", stderr_path="e", pid=1
    )


def test_reference_job_paths_map_to_local_ones(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    assert settings.path_map == {
        P3S_AFS_INPUTS: str(PACKAGED_PAYLOADS / "p3s-inputs"),
        P3S_EOS_AREA: str(tmp_path / "data"),
    }
    (job,) = load_jobs(REFERENCE_JOBS / "evdisp_main.json")
    env = job_environment(job, "uuid-1", settings.path_map)
    assert env["P3S_INPUT_DIR"] == f"{tmp_path}/data/input/"
    assert env["P3S_EVDISP_DIR"] == f"{tmp_path}/data/evdisp/"
    assert env["P3S_LAR_SETUP"].startswith(str(PACKAGED_PAYLOADS / "p3s-inputs"))
    assert env["P3S_JOB_UUID"] == "uuid-1" and env["P3S_PYTHON"] == sys.executable
    assert env["DUNETPCVER"] == "v06_69_00"  # values that are not site paths stay as they are


def test_an_explicit_map_replaces_the_default(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, site_path_map={"/eos/x": "/data/x"})
    assert settings.path_map == {"/eos/x": "/data/x"}


def test_final_states_carry_p3s_meaning() -> None:
    (job,) = load_jobs(REFERENCE_JOBS / "evdisp_main.json")
    assert final_state(job, outcome()).type.value == "COMPLETED"
    failed = final_state(job, outcome(3))
    assert failed.type.value == "FAILED" and "code 3" in failed.message
    limit = final_state(job, outcome(-15, timed_out=True))
    assert limit.name == "TimeLimit" and "1000 s" in limit.message and "errcode 77" in limit.message
