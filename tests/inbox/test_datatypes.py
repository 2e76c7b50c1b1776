"""Data types map file names to the DQM deployments they feed, and prefect.yaml agrees."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from prefect.flows import load_flow_from_entrypoint

from p3s.system.datatypes import DataType, classify, default_datatypes
from p3s.system.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def _deployments() -> dict[str, dict]:
    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    found = {}
    for deployment in config["deployments"]:
        flow = load_flow_from_entrypoint(str(ROOT / deployment["entrypoint"]))
        found[f"{flow.name}/{deployment['name']}"] = deployment
    return found


def test_np04_raw_names_give_run_and_subrun_and_feed_all_four_dqm_flows() -> None:
    identity = classify("np04_raw_run004649_0012_dl3.h5", default_datatypes())
    assert identity is not None
    assert (identity.datatype, identity.run, identity.subrun) == ("np04-raw", 4649, 12)
    (np04,) = default_datatypes()
    assert sorted(np04.feeds.values()) == [
        "dqm-beam/inbox",
        "dqm-evdisplay/inbox",
        "dqm-purity/inbox",
        "dqm-tpc-monitor/inbox",
    ]
    for name in ("np04_raw_run4649_0012_dl3.h5", "np04_raw_run004649_0012_dl3.h5.part", "x.h5"):
        assert classify(name, default_datatypes()) is None


def test_data_types_are_configurable_and_a_bad_pattern_is_refused(monkeypatch) -> None:
    monkeypatch.setenv(
        "P3S_INBOX__DATATYPES",
        '[{"name": "np04-cosmics", "pattern": "^cosmics_(?P<run>\\\\d+)\\\\.h5$", '
        '"feeds": {"purity": "dqm-purity/inbox"}}]',
    )
    (only,) = Settings().inbox.datatypes
    assert classify("cosmics_17.h5", [only]).run == 17
    with pytest.raises(ValueError, match="not a regular expression"):
        DataType(name="bad", pattern="np04_(", feeds={})


def test_every_fed_deployment_is_triggered_by_arrivals_of_its_data_type() -> None:
    deployments = _deployments()
    for datatype in default_datatypes():
        for deployment_name in datatype.feeds.values():
            assert deployment_name in deployments, f"{deployment_name} is not in prefect.yaml"
            triggers = [
                t
                for t in deployments[deployment_name].get("triggers", [])
                if "p3s.file.arrived" in t["expect"]
            ]
            assert len(triggers) == 1, f"{deployment_name} needs one p3s.file.arrived trigger"
            (trigger,) = triggers
            assert trigger["match"]["p3s.datatype"] == datatype.name
            assert trigger["match"]["prefect.resource.id"] == "p3s.file.*"
            # What the scan found travels with the file: nothing is parsed twice.
            assert trigger["parameters"] == {
                "file_url": "{{ event.payload.url }}",
                "run": "{{ event.payload.run }}",
                "subrun": "{{ event.payload.subrun }}",
                "datatype": "{{ event.payload.datatype }}",
            }


def test_no_deployment_is_triggered_by_a_data_type_that_feeds_nothing() -> None:
    fed = {(d.name, dep) for d in default_datatypes() for dep in d.feeds.values()}
    for name, deployment in _deployments().items():
        for trigger in deployment.get("triggers", []):
            if "p3s.file.arrived" in trigger["expect"]:
                assert (trigger["match"]["p3s.datatype"], name) in fed


def test_no_flow_run_follows_a_finished_dqm_flow() -> None:
    """The life cycle and the transport are tasks of each DQM run: at most four flow runs per
    raw file, and nothing is triggered by ``p3s.dqm.finished`` (it stays for alarms)."""
    deployments = _deployments()
    for name, deployment in deployments.items():
        for trigger in deployment.get("triggers", []):
            assert "p3s.dqm.finished" not in trigger["expect"], name
    fed = {dep for d in default_datatypes() for dep in d.feeds.values()}
    triggered = {
        name
        for name, deployment in deployments.items()
        for trigger in deployment.get("triggers", [])
        if "p3s.file.arrived" in trigger["expect"]
    }
    assert triggered == fed and len(fed) == 4
    schedule = deployments["inbox-scan/scheduled"]["schedules"][0]
    assert schedule["active"] is False  # p3s up runs the watcher instead
