"""The batch descriptions a pilot pool generates: HTCondor (parsed and expanded by the
``htcondor`` bindings, as a schedd would) and Slurm (its exports survive a shell)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from p3s.blocks.pilot_pool import PilotPool, walltime_seconds

from p3s.pilots.cluster import job_script


@pytest.fixture
def htcondor(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CONDOR_CONFIG", "/dev/null")  # no HTCondor installation here
    import htcondor

    return htcondor


def test_htcondor_submit_description(htcondor, tmp_path: Path) -> None:
    pool = PilotPool(
        cluster="htcondor",
        cores=4,
        memory="8GiB",
        disk="10GiB",
        walltime="08:00:00",
        job_flavour="workday",
        log_directory=str(tmp_path / "logs"),
        job_extra_directives={"requirements": '(OpSysAndVer =?= "AlmaLinux9")'},
    )
    submit = htcondor.Submit(job_script(pool, "tcp://p3s.cern.ch:8786"))
    (ad,) = list(submit.jobs(count=1, clusterid=7))
    assert ad.eval("JobUniverse") == 5  # vanilla
    assert ad.eval("RequestCpus") == 4
    assert ad.eval("RequestMemory") == 8 * 1024  # MiB
    assert ad.eval("RequestDisk") == 10 * 1024 * 1024  # KiB
    assert ad.eval("JobFlavour") == "workday"
    assert ad.eval("MaxRuntime") == 8 * 3600
    assert ad.eval("Out") == f"{tmp_path}/logs/worker-7.0.out"
    assert ad.eval("Err") == f"{tmp_path}/logs/worker-7.0.err"
    assert ad.eval("UserLog") == f"{tmp_path}/logs/worker-7.log"
    assert ad.eval("Requirements") is not None
    assert "distributed.cli.dask_worker tcp://p3s.cern.ch:8786" in " ".join(
        ad.eval("Arguments").replace("' '", " ").split()
    )


def test_slurm_script_exports_survive_the_shell(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    tricky = "a b'c\"$(touch /tmp/never)"
    monkeypatch.setenv("P3S_TRICKY", tricky)
    pool = PilotPool(cluster="slurm", cores=2, queue="debug", job_extra_directives=["--exclusive"])
    script = job_script(pool, "tcp://host:8786")
    assert "#SBATCH -p debug" in script and "#SBATCH --exclusive" in script
    assert "#SBATCH --cpus-per-task=2" in script
    exports = "\n".join(line for line in script.splitlines() if line.startswith("export "))
    out = subprocess.run(
        ["bash", "-c", exports + '\nprintf %s "$P3S_TRICKY"'],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out == tricky


def test_pool_bounds_and_walltime() -> None:
    with pytest.raises(ValueError, match="min_pilots"):
        PilotPool(min_pilots=5, max_pilots=2)
    assert walltime_seconds("01:30:00") == 5400
    assert walltime_seconds("2-00:00:10") == 2 * 86400 + 10
    assert walltime_seconds("45") == 45 * 60
    with pytest.raises(ValueError, match="local pilot pool"):
        job_script(PilotPool(cluster="local"))


def test_a_lost_batch_pilots_runs_wait_out_its_death_timeout() -> None:
    """The pilot ends itself after ``death_timeout`` without its scheduler; its runs are
    executed again only after that, so never twice at the same time."""
    pool = PilotPool(cluster="slurm", death_timeout=15)
    assert "--death-timeout 15" in job_script(pool, "tcp://host:8786")
    assert pool.lost_grace_s > 15
    assert PilotPool(cluster="htcondor").lost_grace_s > 60, "dask-jobqueue's default"
    assert PilotPool(cluster="local").lost_grace_s < 15, "a nanny kills its worker in 4 s"


def test_slots_from_the_settings_reach_the_pool_and_its_batch_job(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``pilots.slots`` gives each pilot more flow-run slots than cores: Dask threads, and
    the scaling that sizes the pool by slots."""
    import asyncio

    from p3s.pilots.cluster import load_pilot_pool
    from p3s.system.settings import Settings

    monkeypatch.setenv("P3S_PILOTS__CLUSTER", "slurm")
    monkeypatch.setenv("P3S_PILOTS__CORES", "2")
    monkeypatch.setenv("P3S_PILOTS__SLOTS", "8")
    pool = asyncio.run(load_pilot_pool(Settings()))
    assert pool.slots_per_pilot == 8
    assert "--nthreads 8" in job_script(pool, "tcp://host:8786")
    monkeypatch.delenv("P3S_PILOTS__SLOTS")
    assert asyncio.run(load_pilot_pool(Settings())).slots_per_pilot == 2
