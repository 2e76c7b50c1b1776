"""The pilots' own Dask settings (``PILOT_DASK_CONFIG``): no profiler, a slow tick monitor and
memory monitor, no malloc trim threshold for the flow-run children. They reach a batch pilot
through its job's exports, which Dask must read back as the same settings, and a local pilot
through its nanny."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import subprocess
import sys
from typing import Any

import dask
import distributed  # noqa: F401 - its defaults are those a pilot starts from
import pytest
from p3s.blocks.pilot_pool import PILOT_DASK_CONFIG, PilotPool, dask_environment

from p3s.pilots.cluster import job_script, start_cluster

READ_BACK = """
import json, sys, dask, distributed  # distributed's defaults first, as a pilot loads them
print(json.dumps({key: dask.config.get(key) for key in json.loads(sys.argv[1])}))
"""


def _defaults() -> dict[str, Any]:
    return {key: dask.config.get(key) for key in PILOT_DASK_CONFIG}


def test_the_settings_differ_from_dask_s_defaults() -> None:
    defaults = _defaults()
    assert all(defaults[key] != value for key, value in PILOT_DASK_CONFIG.items()), defaults


def _read_back_after(shell_lines: str) -> dict[str, Any]:
    """The pilots' settings as a Dask process started after ``shell_lines`` (a job's exports,
    run by ``/bin/sh``) reads them, in an environment without other DASK_ variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_")}
    read = shlex.join([sys.executable, "-c", READ_BACK, json.dumps(list(PILOT_DASK_CONFIG))])
    out = subprocess.run(
        ["/bin/sh", "-c", f"{shell_lines}\nexec {read}"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


def test_a_slurm_pilot_s_exports_are_read_back_by_dask() -> None:
    script = job_script(PilotPool(cluster="slurm"), "tcp://host:8786")
    exports = dask_environment(PILOT_DASK_CONFIG)
    for name, value in exports.items():
        assert f"export {name}={shlex.quote(value)}" in script
    lines = "\n".join(line for line in script.splitlines() if line.startswith("export DASK_"))
    assert _read_back_after(lines) == PILOT_DASK_CONFIG


def _split_condor_arguments(text: str) -> list[str]:
    """argv from a job ad's ``Arguments`` (HTCondor's V2 syntax: white space separates, single
    quotes group, two single quotes inside a group are one)."""
    args: list[str] = []
    current: list[str] | None = None
    quoted = False
    i = 0
    while i < len(text):
        c = text[i]
        if c == "'" and quoted and text[i + 1 : i + 2] == "'":
            current = (current or []) + ["'"]
            i += 1
        elif c == "'":
            quoted, current = not quoted, current or []
        elif c.isspace() and not quoted:
            if current is not None:
                args.append("".join(current))
            current = None
        else:
            current = (current or []) + [c]
        i += 1
    if current is not None:
        args.append("".join(current))
    return args


def test_an_htcondor_pilot_s_arguments_are_read_back_by_dask(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The exports travel in the submit description's Arguments (quoted by dask-jobqueue,
    parsed by the htcondor bindings as a schedd would), then through the job's shell."""
    monkeypatch.setenv("CONDOR_CONFIG", "/dev/null")  # no HTCondor installation here
    import htcondor

    submit = htcondor.Submit(job_script(PilotPool(cluster="htcondor"), "tcp://host:8786"))
    (ad,) = list(submit.jobs(count=1, clusterid=1))
    flag, command = _split_condor_arguments(ad.eval("Arguments"))
    assert flag == "-c" and "distributed.cli.dask_worker tcp://host:8786" in command
    exports = command.partition(f"; {sys.executable} -m distributed.cli.dask_worker")[0]
    assert _read_back_after(exports) == PILOT_DASK_CONFIG


def _environment() -> dict[str, str | None]:
    return {key: os.environ.get(key) for key in PILOT_DASK_CONFIG[PRE_SPAWN]}


PRE_SPAWN = "distributed.nanny.pre-spawn-environ"


def test_a_local_pilot_runs_with_them() -> None:
    async def read_on_a_pilot() -> tuple[dict[str, Any], dict[str, str | None]]:
        from distributed import Client

        with dask.config.set({}):  # start_cluster sets them in this process: undo after
            cluster = await start_cluster(PilotPool(cluster="local", slots=1))
            try:
                cluster.scale(1)
                async with Client(cluster, asynchronous=True) as client:
                    await client.wait_for_workers(1, timeout=60)
                    found = await client.run(_defaults)
                    environ = await client.run(_environment)
            finally:
                await cluster.close()
        (config,) = found.values()
        (env,) = environ.values()
        return config, env

    config, env = asyncio.run(read_on_a_pilot())
    assert config == PILOT_DASK_CONFIG
    # What the pilot's flow-run children inherit: glibc's own malloc thresholds (no trim
    # threshold set), one BLAS/OpenMP thread per payload.
    assert env == {
        "MALLOC_TRIM_THRESHOLD_": os.environ.get("MALLOC_TRIM_THRESHOLD_"),
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
    }
