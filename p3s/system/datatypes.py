"""Data types: which inbox file names are which kind of data, and which DQM deployments they feed.

p3s kept a table of "Data Types"; here a data type is a name, a regular expression over the
file name (its named groups ``run`` and ``subrun`` become the event's run and subrun) and the
DQM payloads it feeds, each with the deployment whose event trigger creates its flow run.

The default is one type, ``np04-raw``: ``np04_raw_run{run:06d}_{subrun:04d}_dl{stream}.h5``,
feeding all four DQM deployments. ``settings.inbox.datatypes`` replaces the list (JSON in
``P3S_INBOX__DATATYPES``); every deployment named here needs a trigger in ``prefect.yaml`` that
matches the type (``tests/inbox/test_datatypes.py`` checks that they agree).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import BaseModel, Field, field_validator

from p3s.payloads import PAYLOADS


def dqm_flow_name(payload: str) -> str:
    """The DQM flow of a payload: ``tpc_monitor`` -> ``dqm-tpc-monitor``."""
    return "dqm-" + payload.replace("_", "-")


def dqm_payload_of(flow_name: str) -> str | None:
    """The payload whose DQM flow is ``flow_name`` (None: not a DQM flow)."""
    return next((p for p in PAYLOADS if dqm_flow_name(p) == flow_name), None)


#: The DQM payloads of protoDUNE-SP and their inbox deployments (flow name/deployment name).
DQM_DEPLOYMENTS: dict[str, str] = {p: f"{dqm_flow_name(p)}/inbox" for p in PAYLOADS}
NP04_RAW_PATTERN = r"^np04_raw_run(?P<run>\d{6,})_(?P<subrun>\d{4,})_dl(?P<stream>\d+)\.h5$"


class DataType(BaseModel):
    """One kind of inbox file: its name pattern and the DQM payloads it feeds."""

    name: str = Field(description="Short name, sent as the event label ``p3s.datatype``.")
    pattern: str = Field(
        description="Regular expression a whole file name must match; named groups ``run`` "
        "and ``subrun`` (decimal) are taken from it, 0 when absent."
    )
    feeds: dict[str, str] = Field(
        description="DQM payload name -> deployment (``flow/deployment``) it triggers."
    )

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(
                f"data type pattern {value!r} is not a regular expression: {exc}"
            ) from exc
        return value

    def match(self, file_name: str) -> FileIdentity | None:
        """The identity of ``file_name`` if it is of this type, else None."""
        found = re.fullmatch(self.pattern, file_name)
        if found is None:
            return None
        groups = found.groupdict()
        return FileIdentity(
            name=file_name,
            datatype=self.name,
            run=int(groups.get("run") or 0),
            subrun=int(groups.get("subrun") or 0),
        )


@dataclass(frozen=True)
class FileIdentity:
    """What a file name says: its data type, run and subrun."""

    name: str
    datatype: str
    run: int
    subrun: int


def default_datatypes() -> list[DataType]:
    """The data types of protoDUNE-SP prompt processing: raw np04 HDF5 feeds every DQM flow."""
    return [DataType(name="np04-raw", pattern=NP04_RAW_PATTERN, feeds=dict(DQM_DEPLOYMENTS))]


def classify(file_name: str, datatypes: Sequence[DataType]) -> FileIdentity | None:
    """The first data type whose pattern matches ``file_name`` (None: no type matches)."""
    for datatype in datatypes:
        identity = datatype.match(file_name)
        if identity is not None:
            return identity
    return None


def by_name(name: str, datatypes: Sequence[DataType]) -> DataType:
    """The data type called ``name``.

    Raises:
        KeyError: no configured data type has that name.
    """
    for datatype in datatypes:
        if datatype.name == name:
            return datatype
    known = ", ".join(d.name for d in datatypes) or "none"
    raise KeyError(f"no data type {name!r} is configured (known: {known})")
