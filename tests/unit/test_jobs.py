"""p3s job files: reference examples parse; malformed ones are refused with line, index, field."""

from __future__ import annotations

from pathlib import Path

import pytest

from p3s.jobs.model import JobFileError, P3SJob, expand_jobs, jobs_to_json, load_jobs, parse_jobs

REFERENCE_JOBS = Path(__file__).resolve().parents[1] / "data" / "p3s-reference" / "jobs"
REFERENCE_FILES = sorted(REFERENCE_JOBS.glob("*.json"))


def test_reference_examples_are_present() -> None:
    assert {p.name for p in REFERENCE_FILES} >= {
        "evdisp_main.json",
        "monitor_main.json",
        "three_simple_jobs.json",
    }


@pytest.mark.parametrize("path", REFERENCE_FILES, ids=lambda p: p.name)
def test_every_reference_example_parses(path: Path) -> None:
    jobs = load_jobs(path)
    assert jobs and all(isinstance(j, P3SJob) for j in jobs)
    assert all(isinstance(j.timeout, int) and isinstance(j.priority, int) for j in jobs)


def test_numbers_written_as_strings_become_numbers() -> None:
    evdisp = load_jobs(REFERENCE_JOBS / "evdisp_main.json")[0]
    assert evdisp.timeout == 1000 and evdisp.priority == 1
    assert evdisp.env["P3S_NEVENTS"] == "5"
    simple = {j.name: j for j in load_jobs(REFERENCE_JOBS / "three_simple_jobs.json")}
    assert simple["printenv"].timeout == 30 and simple["printenv"].priority == 10
    assert simple["printenv"].tags == ["p3s-job", "jobtype:test"]


def test_filename_list_makes_one_job_per_file_and_replicas() -> None:
    jobs = load_jobs(REFERENCE_JOBS / "evdisp_main.json")
    out = expand_jobs(jobs, filenames=["a.h5", "b.h5"], replicas=3, dunetpcver="v07_00_00")
    assert [j.env["P3S_INPUT_FILE"] for j in out] == ["a.h5"] * 3 + ["b.h5"] * 3
    assert {j.env["DUNETPCVER"] for j in out} == {"v07_00_00"}
    assert jobs[0].env["P3S_INPUT_FILE"] == "dummy_to_be_replaced"  # the original is untouched
    out[0].env["X"] = "1"
    assert "X" not in out[1].env  # replicas do not share their env


def test_replicas_must_be_positive() -> None:
    with pytest.raises(ValueError, match="replicas"):
        expand_jobs([], replicas=0)


def test_round_trip_through_json() -> None:
    jobs = load_jobs(REFERENCE_JOBS / "three_simple_jobs.json")
    assert parse_jobs(jobs_to_json(jobs)) == jobs


BAD = """[
  {"name": "ok", "timeout": 10, "jobtype": "t", "payload": "/bin/true", "priority": 1,
   "state": "defined", "env": {}},
  {"name": "bad", "timeout": "ten", "jobtype": "t", "payload": "/bin/true",
   "priority": 11, "state": "defined", "env": {}}
]"""


def test_malformed_job_names_line_index_and_field() -> None:
    with pytest.raises(JobFileError) as info:
        parse_jobs(BAD, "jobs.json")
    text = str(info.value)
    assert "jobs.json: line 4: job [1] field 'timeout'" in text
    assert "jobs.json: line 5: job [1] field 'priority'" in text
    assert "job [0]" not in text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[{"name": "a"', "line 1, column"),
        ('{"name": "a"}', "JSON list of job objects"),
        ("[]", "holds no job"),
        ("[\n 3\n]", "line 2: job [0]: expected an object"),
        (
            '[{"name": "a", "timeout": 1, "jobtype": "t", "payload": "x", "colour": "red"}]',
            "field 'colour': Extra inputs are not permitted",
        ),
        (
            '[{"name": "a", "timeout": 1, "jobtype": "t", "payload": "/bin/true", "env": []}]',
            "field 'env'",
        ),
        (
            '[{"name": "a", "timeout": 1, "jobtype": "t", "payload": "x", "state": "bogus"}]',
            "field 'state'",
        ),
        ('[{"timeout": 1, "jobtype": "t", "payload": "x"}]', "field 'name': Field required"),
    ],
)
def test_malformed_documents_are_refused(text: str, expected: str) -> None:
    with pytest.raises(JobFileError, match="in.json") as info:
        parse_jobs(text, "in.json")
    assert expected in str(info.value)


def test_unreadable_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(JobFileError, match="cannot read"):
        load_jobs(tmp_path / "missing.json")
