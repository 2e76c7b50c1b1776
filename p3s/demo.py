"""A simulated run through every DQM payload, as p3s jobs: what ``p3s demo`` shows a newcomer."""

from __future__ import annotations

from pathlib import Path

from p3s.jobs import P3SJob
from p3s.settings import PACKAGED_PAYLOADS, Settings

#: The DQM payloads, in the order a shifter reads them.
DQM_PAYLOADS = ("tpc_monitor", "purity", "evdisplay", "beam")
DQM_RUNNER = PACKAGED_PAYLOADS / "bin" / "p3s-dqm"


def dqm_jobs(raw_file: Path, outbox: Path, n_events: int | None = None) -> list[P3SJob]:
    """One p3s job per DQM payload on one raw file; products go to the outbox."""
    env = {"P3S_INPUT_FILE": str(raw_file), "P3S_OUTPUT_DIR": str(outbox)}
    if n_events is not None:
        env["P3S_NEVENTS"] = str(n_events)
    return [
        P3SJob(
            name=f"dqm:{name}:{raw_file.name}",
            timeout=1800,
            jobtype=f"dqm-{name}",
            payload=f"{DQM_RUNNER} {name}",
            priority=5,
            env=env,
        )
        for name in DQM_PAYLOADS
    ]


def simulate_run(settings: Settings, run: int, n_events: int, seed: int) -> Path:
    """Write a reduced-geometry raw file for ``run`` into the data root's ``raw/`` folder."""
    from p3s.payloads.rawformat import raw_filename
    from p3s.payloads.simulate import simulate_file

    folder = settings.data / "raw"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / raw_filename(run, 1)
    simulate_file(path, run=run, subrun=1, n_events=n_events, seed=seed)
    return path
