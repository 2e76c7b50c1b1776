"""GraphML workflows on a real Prefect server (SQLite and PostgreSQL), run by the real worker.

Every workflow of this module is submitted at once (the pool runs them side by side), then each
test checks one of them: the p3s reference templates as they are, a failure injected in one
filter of 3filters, and the DQM chain on a small simulated raw file.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SCRIPTS, Stack, wait_for_runs

# The Prefect database does not change this path: it runs on the SQLite stack only (the
# PostgreSQL stack runs tests/integration/test_jobs_on_server.py, the catalog is tested on
# PostgreSQL in test_catalog.py); this keeps the suite within its time budget.
pytestmark = [
    pytest.mark.integration,
    pytest.mark.parametrize("stack", ["sqlite"], indirect=True),
]
ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "tests" / "data" / "p3s-reference" / "workflows"
MALFORMED = ROOT / "tests" / "data" / "graphml"
DQM_CHAIN = ROOT / "payloads" / "workflows" / "dqm_chain.graphml"
BIN = Path(sys.executable).parent
#: Where the reference templates read and write (their edges' dirpath, kept as they are).
P3SDATA = Path("/tmp/p3sdata")
#: A payload outside the stack's payload roots.
OUTSIDE = "/usr/sbin/nologin"
INPUT_TEXT = "TEST1 a\nTEST2 b\nTEST2 c\nTEST3 d\nTEST3 e\nTEST3 f\nnothing\n"


@dataclass
class Submitted:
    runs: dict[str, Any]  # label -> final flow run
    failure_dir: Path
    raw_file: Path
    data_root: Path


def p3s(stack: Stack, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "p3s"), *args],
        env={**os.environ, **stack.env, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def prefect_deployment_run(stack: Stack, *params: str) -> str:
    """Start p3s-workflow/template with ``prefect deployment run``; returns the run id."""
    args = [str(BIN / "prefect"), "deployment", "run", "p3s-workflow/template"]
    for param in params:
        args += ["--param", param]
    result = subprocess.run(
        args, env={**os.environ, **stack.env}, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return next(line.split()[-1] for line in result.stdout.splitlines() if "UUID" in line)


def submit(stack: Stack, template: str, **options: Any) -> str:
    from p3s.workflows.client import prepare_submission, submit_workflow

    workflow, parameters = prepare_submission(template, settings=stack.settings, **options)
    return str(asyncio.run(submit_workflow(workflow, parameters)).id)


def cli_submit(stack: Stack, *args: str) -> str:
    """``p3s workflow submit``; returns the run id it prints."""
    done = p3s(stack, "workflow", "submit", *args)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.split(", run ")[-1].split()[0]


@pytest.fixture(scope="module")
def submitted(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Submitted]:
    from p3s.payloads.rawformat import raw_filename
    from p3s.payloads.simulate import simulate_file

    from p3s.system.settings import get_settings

    get_settings.cache_clear()  # this process now reads the stack's settings
    for template in (REFERENCE / "3filters.graphml", REFERENCE / "twostep_named_keys.graphml"):
        added = p3s(stack, "workflow", "add", str(template), "--replace")
        assert added.returncode == 0, added.stdout + added.stderr
    from p3s.workflows.templates import register_template

    register_template(DQM_CHAIN, overwrite=True)

    shutil.rmtree(P3SDATA, ignore_errors=True)
    P3SDATA.mkdir(parents=True)
    (P3SDATA / "input.txt").write_text(INPUT_TEXT)
    failure_dir = tmp_path_factory.mktemp("failure")
    (failure_dir / "input.txt").write_text(INPUT_TEXT)
    refused_dir = tmp_path_factory.mktemp("refused")
    (refused_dir / "input.txt").write_text(INPUT_TEXT)
    edges = ["NOOP1:filter1", "NOOP1:filter2", "NOOP1:filter3"]
    edges += ["filter1:NOOP2", "filter2:NOOP2", "filter3:NOOP2"]
    raw_dir = tmp_path_factory.mktemp("raw")
    raw_file = raw_dir / raw_filename(7, 3)
    simulate_file(raw_file, run=7, subrun=3, n_events=2, n_ticks=2000, seed=3)

    ids = {
        "3filters": prefect_deployment_run(stack, "template=3filters"),
        "twostep": cli_submit(stack, "twostep_named_keys", "--fileinfo", "sticky"),
        "failure": submit(
            stack,
            "3filters",
            fileinfo=json.dumps({key: {"dirpath": f"{failure_dir}/"} for key in edges}),
            jobinfo=json.dumps(
                {"filter2": {"payload": f"{SCRIPTS}/exit_with.sh 3", "env": {"P3S_EXECMODE": ""}}}
            ),
            name="3filters-broken-filter2",
        ),
        # Created without `p3s workflow submit`, which would refuse it: the flow refuses the node.
        "refused": prefect_deployment_run(
            stack,
            "template=3filters",
            "fileinfo=" + json.dumps({key: {"dirpath": f"{refused_dir}/"} for key in edges}),
            "jobinfo="
            + json.dumps({"filter3": {"payload": OUTSIDE, "env": {"P3S_EXECMODE": "ARGS"}}}),
            "name=3filters-refused-filter3",
        ),
        "dqm": submit(
            stack,
            "dqm_chain",
            input_file=str(raw_file),
            jobinfo=json.dumps(
                {n: {"env": {"P3S_NEVENTS": "1"}} for n in ("evdisplay", "tpc_monitor")}
            ),
        ),
    }
    finished = asyncio.run(wait_for_runs(list(ids.values()), timeout_s=480))
    by_id = {str(run.id): run for run in finished}
    yield Submitted(
        runs={label: by_id[run_id] for label, run_id in ids.items()},
        failure_dir=failure_dir,
        raw_file=raw_file,
        data_root=stack.settings.data,
    )
    from prefect.events.worker import EventsWorker

    EventsWorker.drain_all(timeout=30)  # this process's events reach the server before it stops


def node_states(run_id: Any) -> dict[str, tuple[str, str]]:
    from p3s.workflows.client import node_views, read_run

    run, task_runs = asyncio.run(read_run(str(run_id)))
    _, views = node_views(run, task_runs)
    return {v.node: (v.state, v.message) for v in views}


def counts(folder: Path, *names: str) -> list[str]:
    return [(folder / name).read_text().strip() for name in names]


def test_reference_templates_run_as_they_are_and_write_their_files(submitted: Submitted):
    for label in ("3filters", "twostep"):
        run = submitted.runs[label]
        assert run.state.is_completed(), f"{label}: {run.state.name}: {run.state.message}"
    # grep -c TEST1, TEST2, TEST3 of the input, as the template's payloads say.
    assert counts(P3SDATA, "output1.txt", "output2.txt", "output3.txt") == ["1", "2", "3"]
    # twostep: the lines with TEST, then their count.
    assert (P3SDATA / "output.txt").read_text().count("TEST") == 6
    assert counts(P3SDATA, "final.txt") == ["6"]
    states = node_states(submitted.runs["3filters"].id)
    assert {state for state, _ in states.values()} == {"Completed"}
    assert list(states) == ["NOOP1", "filter1", "filter2", "filter3", "NOOP2"]
    assert "template:3filters" in submitted.runs["3filters"].tags


def test_failed_filter_stops_noop2_and_keeps_the_other_outputs(submitted: Submitted):
    run = submitted.runs["failure"]
    assert run.state.is_failed()
    assert "node filter2 failed" in run.state.message
    assert "payload exited with code 3" in run.state.message
    assert "skipped: NOOP2" in run.state.message
    states = node_states(run.id)
    assert states["filter2"] == ("Failed", "payload exited with code 3")
    assert states["NOOP2"][0] == "Skipped"
    assert states["NOOP2"][1].startswith("Skipped: parent filter2 failed")
    assert {states[n][0] for n in ("NOOP1", "filter1", "filter3")} == {"Completed"}
    assert counts(submitted.failure_dir, "output1.txt", "output3.txt") == ["1", "3"]
    assert not (submitted.failure_dir / "output2.txt").exists()


def test_dqm_chain_runs_the_payloads_on_one_raw_file(submitted: Submitted):
    run = submitted.runs["dqm"]
    assert run.state.is_completed(), f"{run.state.name}: {run.state.message}"
    summary_file = submitted.data_root / "output" / "np04_raw_run000007_0003_dl1_dqm_summary.json"
    summary = json.loads(summary_file.read_text())
    assert (summary["run"], summary["subrun"], summary["events"]) == (7, 3, 2)
    assert summary["input"] == str(submitted.raw_file)
    assert set(summary["payloads"]) == {"evdisplay", "tpc_monitor"}
    for name, result in summary["payloads"].items():
        products = Path(result["products"])
        assert products == submitted.data_root / "output" / "run000007" / "0003" / name
        assert (products / "summary.json").is_file()
        assert result["files"] > 1
    assert set(summary["dataprep"]) == {"U", "V", "X"}
    assert all(plane["noise_median_adc"] > 0 for plane in summary["dataprep"].values())
    # The raw file was verified and staged; the input itself is left where it was.
    staged = submitted.data_root / "workflow" / "np04_raw_run000007_0003_dl1_staged.h5"
    assert staged.read_bytes() == submitted.raw_file.read_bytes()
    order = node_states(run.id)
    assert list(order)[:2] == ["input", "dataprep"] and list(order)[-2:] == ["summary", "done"]


def test_cli_shows_lists_and_exports_workflows(submitted: Submitted, stack: Stack, tmp_path):
    run = submitted.runs["failure"]
    drawing = stack.settings.home / "content" / "workflows" / f"{run.id}.png"
    assert drawing.read_bytes().startswith(b"\x89PNG")  # drawn by the flow at its end
    drawing.unlink()
    shown = p3s(stack, "workflow", "show", str(run.id))
    assert shown.returncode == 0, shown.stderr
    assert "Skipped: parent filter2 failed" in shown.stdout
    assert drawing.read_bytes().startswith(b"\x89PNG")  # drawn again by show
    assert str(drawing) in shown.stdout

    listed = p3s(stack, "workflow", "list")
    assert listed.returncode == 0, listed.stderr
    for name in ("3filters", "twostep_named_keys", "dqm_chain"):
        assert name in listed.stdout

    exported = tmp_path / "3filters.graphml"
    done = p3s(stack, "workflow", "export", "3filters", str(exported))
    assert done.returncode == 0, done.stderr
    from p3s.workflows.graphml import read_template

    again = read_template(exported, roots=[Path("/usr/bin")], prefix_map={})
    original = read_template(
        REFERENCE / "3filters.graphml", roots=[Path("/usr/bin")], prefix_map={}
    )
    assert list(again.graph().edges(data=True)) == list(original.graph().edges(data=True))


def test_a_node_outside_the_roots_is_refused_at_submit_and_by_the_flow(
    stack: Stack, submitted: Submitted
):
    jobinfo = {"filter3": {"payload": OUTSIDE, "env": {"P3S_EXECMODE": "ARGS"}}}
    refused = p3s(stack, "workflow", "submit", "3filters", "--jobinfo", json.dumps(jobinfo))
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert (
        f"refused: node 'filter3' attribute 'payload': payload '{OUTSIDE}' is outside the "
        "payload roots (" in refused.stderr
    )
    bad_env = {"filter1": {"env": {"BAD NAME;rm -rf /": "x"}}}
    refused = p3s(stack, "workflow", "submit", "3filters", "--jobinfo", json.dumps(bad_env))
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert (
        "refused: jobinfo 'filter1' field 'env[\"BAD NAME;rm -rf /\"]': not a valid environment "
        "variable name" in refused.stderr
    )
    # The run created by other means: its node is refused by the flow, nothing of it ran.
    run = submitted.runs["refused"]
    assert run.state.is_failed(), f"{run.state.name}: {run.state.message}"
    states = node_states(run.id)
    assert states["filter3"][0] == "Refused"
    assert f"payload '{OUTSIDE}' is outside the payload roots" in states["filter3"][1]
    assert states["NOOP2"][0] == "Skipped"


def test_malformed_template_and_bad_options_are_refused(stack: Stack, submitted: Submitted):
    from p3s.workflows.templates import WorkflowError

    refused = p3s(stack, "workflow", "add", str(MALFORMED / "unknown_node.graphml"))
    assert refused.returncode == 2
    assert "edge 'b -> filter9'" in refused.stderr and "is not a node" in refused.stderr
    with pytest.raises(WorkflowError, match="'filter9' is not a node of '3filters'"):
        submit(stack, "3filters", jobinfo='{"filter9": {}}')
    with pytest.raises(LookupError, match="no workflow template named 'no-such-template'"):
        submit(stack, "no-such-template")
