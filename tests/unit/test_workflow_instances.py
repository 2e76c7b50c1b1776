"""Instantiating templates as p3s did (env[datatag] = dirpath + name on both ends of every edge),
the fileinfo and jobinfo options, and the drawing of a run; no server needed."""

from __future__ import annotations

from pathlib import Path

import pytest

from p3s.workflows.client import NodeView, draw_workflow
from p3s.workflows.graphml import read_template
from p3s.workflows.templates import WorkflowError, instantiate, vet_workflow

REFERENCE = Path(__file__).resolve().parents[1] / "data" / "p3s-reference" / "workflows"
DATATYPES = {"TXT": ".txt"}


@pytest.fixture
def filters():
    return read_template(
        REFERENCE / "3filters.graphml", roots=[Path("/usr/bin")], prefix_map={}, datatypes=DATATYPES
    )


def make(template, **options):
    return instantiate(template, datatypes=DATATYPES, **options)


def test_every_edge_sets_its_datatag_on_source_and_target(filters):
    workflow = make(filters)
    env = {n.node: n.job.env for n in workflow.nodes}
    assert env["NOOP1"] == {"INPTXT": "/tmp/p3sdata/input.txt"}
    assert env["filter2"] == {
        "P3S_EXECMODE": "SHELL",
        "INPTXT": "/tmp/p3sdata/input.txt",
        "OUTTXT2": "/tmp/p3sdata/output2.txt",
    }
    assert set(env["NOOP2"]) == {"OUTTXT1", "OUTTXT2", "OUTTXT3"}
    node = workflow.node("filter2")
    assert (node.job.timeout, node.job.priority, node.job.jobtype) == (7777, 4, "filter")
    assert node.parents == ["NOOP1"] and node.trusted
    assert workflow.node("NOOP2").parents == ["filter1", "filter2", "filter3"]
    assert workflow.input_files == ["/tmp/p3sdata/input.txt"]


def test_parents_come_first_and_higher_priority_first(filters):
    order = [n.node for n in make(filters).nodes]
    assert order[0] == "NOOP1" and order[-1] == "NOOP2"
    assert order[1:4] == ["filter1", "filter2", "filter3"]


def test_inherit_and_input_give_each_input_its_own_files(filters):
    workflow = make(filters, input_file="/data/run42.txt")
    env = workflow.node("filter1").job.env
    assert env["INPTXT"] == "/data/run42.txt"
    assert env["OUTTXT1"] == "/tmp/p3sdata/run42_output1.txt"
    inherited = make(filters, fileinfo="inherit:np04_raw_run000001_0001_dl1.h5")
    assert inherited.node("NOOP2").job.env["OUTTXT3"] == (
        "/tmp/p3sdata/np04_raw_run000001_0001_dl1_output3.txt"
    )


def test_fileinfo_json_overrides_one_edge(filters, tmp_path):
    workflow = make(filters, fileinfo='{"filter3:NOOP2": {"name": "x.txt", "dirpath": "/out"}}')
    assert workflow.node("filter3").job.env["OUTTXT3"] == "/out/x.txt"
    assert workflow.node("filter1").job.env["OUTTXT1"] == "/tmp/p3sdata/output1.txt"
    info = tmp_path / "info.json"
    info.write_text('{"NOOP1:filter1": {"dirpath": "/in/"}}')
    assert make(filters, fileinfo=str(info)).node("filter1").job.env["INPTXT"] == "/in/input.txt"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"fileinfo": '{"filter9:NOOP2": {"name": "a"}}'}, "'filter9:NOOP2' is not an edge"),
        ({"fileinfo": '{"filter1:NOOP2": {"nam": "a"}}'}, "expected an object with 'name'"),
        ({"fileinfo": '{"filter1:NOOP2": {"name": "../a"}}'}, "'../a' is not a plain file"),
        ({"fileinfo": "{not json"}, "fileinfo: not valid JSON"),
        ({"fileinfo": "inherit:"}, "give a file name after 'inherit:'"),
        ({"jobinfo": '{"filter9": {}}'}, "'filter9' is not a node of '3filters'"),
        ({"jobinfo": '{"filter1": {"cmd": "x"}}'}, "jobinfo 'filter1': expected an object"),
        ({"jobinfo": '{"filter1": {"priority": 12}}'}, "jobinfo 'filter1'"),
        ({"jobinfo": "[]"}, "jobinfo: expected a JSON object, got list"),
    ],
)
def test_bad_options_are_refused_naming_the_edge_or_node(filters, options, message):
    with pytest.raises(WorkflowError, match=message.replace("(", r"\(").replace("[", r"\[")):
        make(filters, **options)


def test_overridden_payload_loses_the_shell(filters):
    workflow = make(filters, jobinfo={"filter1": {"payload": "/bin/grep -c X $INPTXT"}})
    assert not workflow.node("filter1").trusted and workflow.node("filter2").trusted
    problems = vet_workflow(workflow, roots=[Path("/usr/bin")], prefix_map={})
    assert len(problems) == 1
    assert problems[0].startswith("node 'filter1' attribute 'payload': P3S_EXECMODE=SHELL")
    env_only = make(filters, jobinfo={"filter1": {"env": {"EXTRA": 1}}})
    assert env_only.node("filter1").trusted
    assert env_only.node("filter1").job.env["EXTRA"] == "1"


def test_a_run_is_drawn_coloured_by_state(filters, tmp_path):
    workflow = make(filters)
    views = [
        NodeView(n.node, n.job.jobtype, n.job.priority, state, "", "")
        for n, state in zip(
            workflow.nodes,
            ["Completed", "Completed", "Failed", "Completed", "Skipped"],
            strict=True,
        )
    ]
    out = draw_workflow(workflow.graph(), views, tmp_path / "run.png", title="3filters")
    assert out.read_bytes().startswith(b"\x89PNG")


def test_jobinfo_env_keys_must_be_variable_names(filters):
    jobinfo = {"filter1": {"env": {"BAD NAME;rm -rf /": "x", "OK": "$(reboot)"}}}
    with pytest.raises(WorkflowError) as caught:
        make(filters, jobinfo=jobinfo)
    assert str(caught.value) == (
        "jobinfo 'filter1' field 'env[\"BAD NAME;rm -rf /\"]': not a valid environment variable "
        "name (letters, digits and '_', not starting with a digit)"
    )
    with pytest.raises(WorkflowError, match=r"^jobinfo 'filter1' field 'timelimit': Input sh"):
        make(filters, jobinfo={"filter1": {"timelimit": "soon"}})


def test_a_jobinfo_payload_outside_the_roots_is_refused_naming_node_and_field(filters):
    workflow = make(
        filters,
        jobinfo={"filter3": {"payload": "/usr/sbin/nologin", "env": {"P3S_EXECMODE": "ARGS"}}},
    )
    assert vet_workflow(workflow, roots=[Path("/usr/bin")], prefix_map={}) == [
        "node 'filter3' attribute 'payload': payload '/usr/sbin/nologin' is outside the payload "
        "roots (/usr/bin); install it under a root or add its folder to P3S_PAYLOAD_ROOTS"
    ]
