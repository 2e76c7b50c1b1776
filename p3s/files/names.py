"""File names from the inbox: which are safe inside a p3s folder, and what a raw file's name
and URL say (run, subrun, data type).
"""

from __future__ import annotations

from dataclasses import dataclass

from p3s.payloads.rawformat import parse_filename

MAX_NAME = 255


class UnsafeName(ValueError):
    """A file name that could leave its folder (``..``, a slash, NUL, absolute, a link)."""


def name_fault(name: str) -> str | None:
    """Why ``name`` may not be used as a file name inside a p3s folder (None: it is safe).

    Refused: empty names, ``.`` and ``..``, any slash or backslash (so no absolute path and no
    sub-folder), NUL and other control characters, and names longer than 255 bytes.
    """
    if not name:
        return "the name is empty"
    if name in (".", ".."):
        return f"{name!r} names a folder, not a file"
    if "/" in name or "\\" in name:
        return f"{name!r} contains a path separator (it would leave its folder)"
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        return f"{name!r} contains a control character (NUL, newline, ...)"
    if len(name.encode("utf-8", "surrogateescape")) > MAX_NAME:
        return f"{name[:40]!r}... is longer than {MAX_NAME} bytes"
    return None


def check_name(name: str) -> str:
    """``name`` if it is a safe file name, else :class:`UnsafeName` saying why."""
    fault = name_fault(name)
    if fault is not None:
        raise UnsafeName(f"refused file name: {fault}")
    return name


@dataclass(frozen=True)
class RawFile:
    """The raw file a DQM run works on: its URL, name, run/subrun and data type."""

    url: str
    name: str
    run: int
    subrun: int
    datatype: str | None = None

    @classmethod
    def from_params(
        cls, url: str, run: int | None, subrun: int | None, datatype: str | None
    ) -> RawFile:
        """The file as the inbox event described it; run/subrun parsed from the name only
        when the event did not carry them (a run started by hand)."""
        name = url.rstrip("/").rpartition("/")[2]
        if run is None or subrun is None:
            run, subrun, _stream = parse_filename(name) or (0, 0, 0)
        return cls(url, name, run, subrun, datatype or None)

    @classmethod
    def from_url(cls, url: str) -> RawFile:
        """The file as its name describes it (run and subrun parsed from it)."""
        return cls.from_params(url, None, None, None)
