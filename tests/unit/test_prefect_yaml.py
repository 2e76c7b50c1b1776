"""prefect.yaml declares the deployments, and each entrypoint loads the flow it names."""

from __future__ import annotations

from pathlib import Path

import yaml
from prefect.flows import load_flow_from_entrypoint

ROOT = Path(__file__).resolve().parents[2]


def test_adhoc_deployment_runs_the_p3s_job_flow() -> None:
    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    deployments = {d["name"]: d for d in config["deployments"]}
    adhoc = deployments["adhoc"]
    assert adhoc["work_pool"]["name"] == "{{ $P3S_WORK_POOL }}"
    flow = load_flow_from_entrypoint(str(ROOT / adhoc["entrypoint"]))
    assert flow.name == "p3s-job"
    assert set(flow.parameters.properties) == {"job"}


def test_every_entrypoint_loads() -> None:
    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    for deployment in config["deployments"]:
        assert load_flow_from_entrypoint(str(ROOT / deployment["entrypoint"])).name
