"""p3s job files: reference examples parse; malformed ones are refused with line, index, field."""

from __future__ import annotations

from pathlib import Path

import pytest

from p3s.jobs.model import (
    JobFileError,
    JobsRefused,
    P3SJob,
    expand_jobs,
    jobs_to_json,
    load_jobs,
    parse_jobs,
    vet_jobs,
)

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


# -- bad inputs met on the way (issue 21): env names, payloads outside the roots --------------

#: A file of three jobs; job [1] has a key that is no variable name (and would be code in a
#: shell), job [2] a payload outside the roots. Values are free text.
THREE = """[
  {"name": "fine", "timeout": 10, "jobtype": "t", "payload": "/bin/true",
   "env": {"P3S_NOTE": "a; rm -rf / $(reboot) `id` 'q'"}},
  {"name": "bad-env", "timeout": 10, "jobtype": "t", "payload": "/bin/true",
   "env": {"OK": "1",
           "BAD NAME;rm -rf /": "x"}},
  {"name": "outside", "timeout": 10, "jobtype": "t", "payload": "/usr/sbin/nologin"}
]"""
ROOTS = [Path("/usr/bin")]


def test_an_env_key_that_is_no_variable_name_refuses_the_file_naming_line_job_and_key() -> None:
    with pytest.raises(JobFileError) as info:
        parse_jobs(THREE, "jobs.json")
    assert str(info.value) == (
        "jobs.json: line 6: job [1] field 'env[\"BAD NAME;rm -rf /\"]': not a valid environment "
        "variable name (letters, digits and '_', not starting with a digit)"
    )


@pytest.mark.parametrize(
    ("key", "shown"),
    [
        ("", '""'),
        ("1ST", '"1ST"'),
        ("A=B", '"A=B"'),
        ("NUL\\u0000", '"NUL\\u0000"'),
        (" PADDED", '" PADDED"'),
        ("semi;colon", '"semi;colon"'),
    ],
)
def test_every_kind_of_bad_env_name_is_refused(key: str, shown: str) -> None:
    text = (
        '[{"name": "a", "timeout": 1, "jobtype": "t", "payload": "/bin/true",\n'
        f'  "env": {{"{key}": "v"}}}}]'
    )
    with pytest.raises(JobFileError) as info:
        parse_jobs(text, "in.json")
    assert f"in.json: line 2: job [0] field 'env[{shown}]': not a valid environment" in str(
        info.value
    )


def test_env_values_are_free_text_but_hold_no_nul() -> None:
    (job,) = parse_jobs(
        '[{"name": "a", "timeout": 1, "jobtype": "t", "payload": "/bin/true",'
        ' "env": {"X": "a; rm -rf / $(reboot) `id` \\"q\\" =", "N": 3}}]'
    )
    assert job.env == {"X": 'a; rm -rf / $(reboot) `id` "q" =', "N": "3"}
    with pytest.raises(JobFileError, match="field 'env\\[\"X\"\\]': the value holds a NUL"):
        parse_jobs(
            '[{"name": "a", "timeout": 1, "jobtype": "t", "payload": "/bin/true",'
            ' "env": {"X": "a\\u0000b"}}]'
        )


def test_a_payload_outside_the_roots_is_refused_at_parse_when_roots_are_given() -> None:
    with pytest.raises(JobFileError) as info:
        parse_jobs(THREE, "jobs.json", roots=ROOTS, prefix_map={})
    lines = str(info.value).splitlines()
    assert len(lines) == 2  # every fault of the file at once; job [0] has none
    assert lines[0].startswith("jobs.json: line 6: job [1] field 'env[\"BAD NAME;rm -rf /\"]'")
    assert lines[1] == (
        "jobs.json: line 7: job [2] field 'payload': payload '/usr/sbin/nologin' is outside "
        "the payload roots (/usr/bin); install it under a root or add its folder to "
        "P3S_PAYLOAD_ROOTS"
    )
    # Without roots (the flow vets at run time) only the model is checked.
    with pytest.raises(JobFileError) as info:
        parse_jobs(THREE, "jobs.json")
    assert "job [2]" not in str(info.value)


def test_a_shell_asked_for_by_an_ad_hoc_job_is_refused_on_its_env() -> None:
    text = (
        '[{"name": "a", "timeout": 1, "jobtype": "t", "payload": "/bin/true",\n'
        '  "env": {"P3S_EXECMODE": "SHELL"}}]'
    )
    with pytest.raises(JobFileError) as info:
        parse_jobs(text, "in.json", roots=ROOTS, prefix_map={})
    assert str(info.value).startswith(
        "in.json: line 2: job [0] field 'env[\"P3S_EXECMODE\"]': P3S_EXECMODE=SHELL is honoured "
        "only for jobs from registered workflow templates"
    )


def test_the_payload_is_vetted_even_when_other_fields_are_at_fault() -> None:
    text = '[{"name": "a", "timeout": "soon", "jobtype": "t", "payload": "/usr/sbin/nologin"}]'
    with pytest.raises(JobFileError) as info:
        parse_jobs(text, "in.json", roots=ROOTS, prefix_map={})
    message = str(info.value)
    assert "job [0] field 'timeout'" in message
    assert "job [0] field 'payload': payload '/usr/sbin/nologin' is outside" in message


def test_vet_jobs_refuses_jobs_changed_after_validation_naming_index_and_field() -> None:
    jobs = load_jobs(REFERENCE_JOBS / "three_simple_jobs.json")
    jobs[2].env["BAD NAME;rm -rf /"] = "x"  # models do not validate on assignment
    with pytest.raises(JobsRefused) as info:
        vet_jobs(jobs)
    assert str(info.value) == (
        "job [2] field 'env[\"BAD NAME;rm -rf /\"]': not a valid environment variable name "
        "(letters, digits and '_', not starting with a digit)"
    )
    outside = P3SJob(name="x", timeout=1, jobtype="t", payload="/usr/sbin/nologin")
    assert vet_jobs([outside]) == [outside]  # payloads only with roots
    with pytest.raises(JobsRefused, match=r"^job \[0\] field 'payload': payload '/usr/sbin/nolog"):
        vet_jobs([outside], roots=ROOTS, prefix_map={})


def test_submit_jobs_creates_nothing_when_any_job_is_at_fault() -> None:
    import asyncio

    from p3s.jobs.client import submit_jobs

    class NoClient:  # any call to the API would fail the test
        def __getattr__(self, name: str):
            raise AssertionError(f"the API was called ({name}) for a refused batch")

    good = P3SJob(name="ok", timeout=1, jobtype="t", payload="/bin/true")
    bad = P3SJob.model_construct(**{**good.model_dump(), "env": {"1X": "y"}})
    with pytest.raises(JobsRefused, match=r"^job \[1\] field 'env\[\"1X\"\]': not a valid"):
        asyncio.run(submit_jobs([good, bad], client=NoClient()))  # type: ignore[arg-type]
