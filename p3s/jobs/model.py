"""p3s job descriptions: the JSON that p3s's job client accepted, validated with pydantic.

A job file is a JSON list of objects with ``name``, ``timeout``, ``jobtype``, ``payload``,
``priority``, ``state`` and ``env``; numbers may be written as strings. ``env`` keys must be
environment variable names (letters, digits and ``_``, not starting with a digit); values are
free text (they reach the payload's environment, never a shell) without NUL. Errors name the
file, the line, the list index and the field, every fault of the file at once, so that an
operator can fix the file at once; a file with any fault is refused whole.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
    field_validator,
)
from pydantic_core import PydanticCustomError

from p3s.jobs.policy import PayloadRefused, resolve_command

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
#: What an environment variable may be called (POSIX's portable names).
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
ENV_NAME_RULE = "letters, digits and '_', not starting with a digit"


def env_name_problem(name: object) -> str | None:
    """Why ``name`` cannot name an environment variable, or None if it can."""
    if not isinstance(name, str) or not ENV_NAME_RE.fullmatch(name):
        return f"not a valid environment variable name ({ENV_NAME_RULE})"
    return None


def _env_name(name: Any) -> Any:
    # Before any stripping: " X" is refused, not silently renamed.
    problem = env_name_problem(name)
    if problem:
        raise PydanticCustomError("env_name", problem)
    return name


def _env_value(value: Any) -> Any:
    if isinstance(value, str) and "\0" in value:
        raise PydanticCustomError("env_value", "the value holds a NUL character")
    return value


EnvMapping = Annotated[
    dict[
        Annotated[str, BeforeValidator(_env_name)],
        Annotated[str, BeforeValidator(_env_value)],
    ],
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


class JobsRefused(ValueError):
    """Jobs that cannot be submitted; one fault a line, naming the job and the field."""


class JobFileError(JobsRefused):
    """A job file that cannot be accepted; the message says where and why."""


#: One fault of a job: the pydantic-style location of the field, and what is wrong.
Fault = tuple[tuple[str | int, ...], str]


def field_label(loc: Sequence[str | int]) -> str:
    """A field as a message names it: ``timeout``, ``env["NAME"]``."""
    if not loc:
        return "(job)"
    if loc[0] == "env" and len(loc) >= 2:
        return f"env[{json.dumps(str(loc[1]))}]"
    return ".".join(str(part) for part in loc)


def _validation_faults(exc: ValidationError) -> list[Fault]:
    faults: list[Fault] = []
    for error in exc.errors():
        plain = error["type"] in ("missing", "env_name", "env_value")
        got = "" if plain else f" (got {error.get('input')!r})"
        faults.append((tuple(error["loc"]), f"{error['msg']}{got}"))
    return faults


def check_job(
    item: Any,
    *,
    roots: Sequence[Path] | None = None,
    prefix_map: Mapping[str, str] | None = None,
) -> tuple[P3SJob | None, list[Fault]]:
    """Validate one job (a JSON object or a :class:`P3SJob`) and return it with its faults.

    Args:
        roots: when given, the payload must also pass the payload policy
            (:func:`p3s.jobs.policy.resolve_command`, untrusted: no shell) under these roots.
        prefix_map: site path prefixes mapped to local ones before the payload is vetted.

    Returns:
        The job (None if any fault was found) and every fault, each with its field.
    """
    if isinstance(item, P3SJob):
        item = item.model_dump()
    if not isinstance(item, dict):
        return None, [((), "expected an object")]
    job: P3SJob | None = None
    try:
        job = P3SJob.model_validate(item)
    except ValidationError as exc:
        faults = _validation_faults(exc)
    else:
        faults = []
    payload = job.payload if job else item.get("payload")
    if (
        roots is not None
        and isinstance(payload, str)
        and not any(loc[:1] == ("payload",) for loc, _ in faults)
    ):
        # Vetted even when other fields are at fault, so that every fault shows at once.
        env = job.env if job else item.get("env")
        env = {k: v for k, v in env.items() if isinstance(v, str)} if isinstance(env, dict) else {}
        try:
            resolve_command(payload, env, roots=roots, prefix_map=prefix_map or {})
        except PayloadRefused as exc:
            loc: tuple[str, ...] = ("env", "P3S_EXECMODE") if exc.field == "env" else ("payload",)
            faults.append((loc, str(exc)))
    return (job if not faults else None), faults


def vet_jobs(
    jobs: Sequence[Any],
    *,
    roots: Sequence[Path] | None = None,
    prefix_map: Mapping[str, str] | None = None,
) -> list[P3SJob]:
    """Validate every job again (see :func:`check_job`) before any is submitted.

    Raises:
        JobsRefused: one line per fault, ``job [INDEX] field 'FIELD': why``; no job is
            returned when any is at fault.
    """
    checked: list[P3SJob] = []
    problems: list[str] = []
    for index, item in enumerate(jobs):
        job, faults = check_job(item, roots=roots, prefix_map=prefix_map)
        for loc, message in faults:
            problems.append(_describe(index, loc, message))
        if job is not None:
            checked.append(job)
    if problems:
        raise JobsRefused("\n".join(problems))
    return checked


def _describe(index: int, loc: Sequence[str | int], message: str) -> str:
    if not loc:
        return f"job [{index}]: {message}"
    return f"job [{index}] field '{field_label(loc)}': {message}"


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


def _field_line(text: str, span: tuple[int, int], loc: Sequence[str | int]) -> int:
    """Line of ``"field":`` inside one element (of ``"key"`` inside its ``env``), else the line
    where the element starts."""
    start, end = span
    if loc and isinstance(loc[0], str):
        found = text.find(f'"{loc[0]}"', start, end)
        if found >= 0:
            if loc[0] == "env" and len(loc) >= 2:
                key = text.find(json.dumps(str(loc[1])), found + len('"env"'), end)
                if key >= 0:
                    return _line_of(text, key)
            return _line_of(text, found)
    return _line_of(text, start)


def parse_jobs(
    text: str,
    source: str = "<job JSON>",
    *,
    roots: Sequence[Path] | None = None,
    prefix_map: Mapping[str, str] | None = None,
) -> list[P3SJob]:
    """Validate a p3s job JSON document and return its jobs.

    Args:
        roots: when given, every payload must also pass the payload policy under these roots
            (``p3s job submit`` gives the configured ones); see :func:`check_job`.
        prefix_map: site path prefixes mapped to local ones before payloads are vetted.

    Raises:
        JobFileError: naming ``source``, the line, the list index and the field of every
            fault; no job is returned when any is at fault.
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
        job, faults = check_job(item, roots=roots, prefix_map=prefix_map)
        for loc, message in faults:
            line = _field_line(text, spans[index], loc)
            problems.append(f"{source}: line {line}: {_describe(index, loc, message)}")
        if job is not None:
            jobs.append(job)
    if problems:
        raise JobFileError("\n".join(problems))
    return jobs


def load_jobs(
    path: str | Path,
    *,
    roots: Sequence[Path] | None = None,
    prefix_map: Mapping[str, str] | None = None,
) -> list[P3SJob]:
    """Read and validate a p3s job file; see :func:`parse_jobs`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise JobFileError(f"{path}: cannot read the job file: {exc}") from None
    return parse_jobs(text, source=str(path), roots=roots, prefix_map=prefix_map)


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
