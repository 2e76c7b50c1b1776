"""p3s job descriptions: the JSON that p3s's job client accepted, validated with pydantic.

A job file is a JSON list of objects with ``name``, ``timeout``, ``jobtype``, ``payload``,
``priority``, ``state`` and ``env``; numbers may be written as strings. Errors name the file,
the line, the list index and the field, so that an operator can fix the file at once.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, WithJsonSchema, field_validator

#: Job states p3s knew; a submitted job is "defined" (or a "template" kept for copying).
P3SState = Literal[
    "template",
    "defined",
    "dispatched",
    "running",
    "finished",
    "timelimit",
    "exception",
    "nonstarter",
    "pilotTO",
]


# p3s wrote numbers as strings too; the JSON schema (which Prefect enforces on deployment
# parameters) must say so, while validation turns them into numbers.
IntOrDigits = Annotated[
    int,
    WithJsonSchema({"anyOf": [{"type": "integer"}, {"type": "string", "pattern": r"^\s*\d+\s*$"}]}),
]
EnvMapping = Annotated[
    dict[str, str],
    WithJsonSchema(
        {"type": "object", "additionalProperties": {"type": ["string", "number", "integer"]}}
    ),
]


class P3SJob(BaseModel):
    """One p3s job: a payload with its environment, time limit and priority."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: str = Field(min_length=1, description="Job name; becomes the flow run name.")
    timeout: IntOrDigits = Field(
        ge=0, description="Time limit in seconds; 0 means none (p3s noop nodes used 0)."
    )
    jobtype: str = Field(min_length=1, description="Job type; becomes a tag of the run.")
    payload: str = Field(description="Path of an executable with optional arguments.")
    priority: IntOrDigits = Field(0, ge=0, le=10, description="0..10, higher is served first.")
    state: P3SState = Field("defined", description="p3s state at submission.")
    env: EnvMapping = Field(
        default_factory=dict, description="Variables handed to the payload's environment."
    )

    @field_validator("env", mode="before")
    @classmethod
    def _env_values_as_strings(cls, value: Any) -> Any:
        # p3s wrote numbers both as strings and as numbers; the environment only holds strings.
        if isinstance(value, dict):
            return {
                key: str(item)
                if isinstance(item, int | float) and not isinstance(item, bool)
                else item
                for key, item in value.items()
            }
        return value

    @property
    def tags(self) -> list[str]:
        return ["p3s-job", f"jobtype:{self.jobtype}"]


class JobFileError(ValueError):
    """A job file that cannot be accepted; the message says where and why."""


def _element_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of the elements of a top-level JSON list, in order."""
    decoder = json.JSONDecoder()
    spans: list[tuple[int, int]] = []
    pos = text.index("[") + 1
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text) or text[pos] == "]":
            return spans
        _, end = decoder.raw_decode(text, pos)
        spans.append((pos, end))
        pos = end


def _line_of(text: str, index: int) -> int:
    return text.count("\n", 0, index) + 1


def _field_line(text: str, span: tuple[int, int], field: str | int | None) -> int:
    """Line of ``"field":`` inside one element, else the line where the element starts."""
    start, end = span
    if isinstance(field, str):
        found = text.find(f'"{field}"', start, end)
        if found >= 0:
            return _line_of(text, found)
    return _line_of(text, start)


def parse_jobs(text: str, source: str = "<job JSON>") -> list[P3SJob]:
    """Validate a p3s job JSON document and return its jobs.

    Raises:
        JobFileError: naming ``source``, the line, the list index and the field at fault.
    """
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise JobFileError(
            f"{source}: line {exc.lineno}, column {exc.colno}: not valid JSON: {exc.msg}"
        ) from None
    if isinstance(data, dict):
        raise JobFileError(
            f"{source}: line 1: a p3s job file is a JSON list of job objects; "
            "wrap this object in [ ... ]"
        )
    if not isinstance(data, list):
        raise JobFileError(f"{source}: line 1: expected a JSON list of job objects")
    if not data:
        raise JobFileError(f"{source}: line 1: the list holds no job")

    spans = _element_spans(text)
    jobs: list[P3SJob] = []
    problems: list[str] = []
    for index, item in enumerate(data):
        if not isinstance(item, dict):
            line = _line_of(text, spans[index][0])
            problems.append(f"{source}: line {line}: job [{index}]: expected an object")
            continue
        try:
            jobs.append(P3SJob.model_validate(item))
        except ValidationError as exc:
            for error in exc.errors():
                loc = error["loc"]
                field = ".".join(str(part) for part in loc) or "(job)"
                line = _field_line(text, spans[index], loc[0] if loc else None)
                got = "" if error["type"] == "missing" else f" (got {error.get('input')!r})"
                problems.append(
                    f"{source}: line {line}: job [{index}] field '{field}': {error['msg']}{got}"
                )
    if problems:
        raise JobFileError("\n".join(problems))
    return jobs


def load_jobs(path: str | Path) -> list[P3SJob]:
    """Read and validate a p3s job file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise JobFileError(f"{path}: cannot read the job file: {exc}") from None
    return parse_jobs(text, source=str(path))


def expand_jobs(
    jobs: Iterable[P3SJob],
    *,
    filenames: Sequence[str] = (),
    replicas: int = 1,
    dunetpcver: str | None = None,
) -> list[P3SJob]:
    """Apply the p3s job client's options: one job per input file, N replicas, DUNETPCVER.

    Args:
        filenames: each name replaces ``env.P3S_INPUT_FILE``, giving one job per file.
        replicas: copies of each resulting job (p3s ``-N``).
        dunetpcver: overrides ``env.DUNETPCVER`` when given.
    """
    if replicas < 1:
        raise ValueError(f"replicas must be at least 1, got {replicas}")
    expanded: list[P3SJob] = []
    for job in jobs:
        for filename in filenames or [None]:
            env = dict(job.env)
            if filename is not None:
                env["P3S_INPUT_FILE"] = filename
            if dunetpcver is not None:
                env["DUNETPCVER"] = dunetpcver
            copy = job.model_copy(update={"env": env})
            expanded.extend(copy.model_copy(deep=True) for _ in range(replicas))
    return expanded


def jobs_to_json(jobs: Iterable[P3SJob]) -> str:
    """The jobs as a p3s job file (round-trips through :func:`parse_jobs`)."""
    return json.dumps([job.model_dump() for job in jobs], indent=2)
