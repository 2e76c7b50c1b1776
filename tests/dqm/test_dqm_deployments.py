"""prefect.yaml declares one inbox deployment per DQM payload, each loading its flow."""

from __future__ import annotations

from pathlib import Path

import yaml
from prefect.flows import load_flow_from_entrypoint

from p3s.system.datatypes import DQM_DEPLOYMENTS

ROOT = Path(__file__).resolve().parents[2]


def test_every_dqm_payload_has_an_inbox_deployment_of_its_flow() -> None:
    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    found = {}
    for deployment in config["deployments"]:
        if not deployment["entrypoint"].startswith("flows/dqm.py:"):
            continue
        flow = load_flow_from_entrypoint(str(ROOT / deployment["entrypoint"]))
        found[f"{flow.name}/{deployment['name']}"] = deployment
        assert set(flow.parameters.properties) == {
            "file_url",
            "n_events",
            "run",
            "subrun",
            "datatype",
        }
        assert flow.parameters.required == ["file_url"]
        assert deployment["work_pool"]["name"] == "{{ $P3S_WORK_POOL }}"
    assert sorted(found) == sorted(DQM_DEPLOYMENTS.values())
