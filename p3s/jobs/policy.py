"""Which payloads may run, and how: the security boundary between job descriptions and a shell.

A payload is an executable under one of the configured payload roots. By default it runs as an
argument list (``shlex.split`` of the payload string, never a shell). Only jobs from a trusted
workflow template may ask for ``P3S_EXECMODE=SHELL``; their command line then goes to
``/bin/sh -c``, and its first word must still resolve under a payload root.
"""

from __future__ import annotations

import os
import shlex
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


class PayloadRefused(PermissionError):
    """A payload that the policy does not allow to run; nothing was started.

    ``field`` names the job field at fault: ``payload``, or ``env`` for a shell asked for by
    a job that may not have one.
    """

    def __init__(self, message: str, *, field: str = "payload") -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Command:
    """A vetted command: ``argv`` for ``subprocess.Popen`` with ``shell=False``."""

    argv: tuple[str, ...]
    executable: Path
    shell: bool = False


def _under(path: Path, roots: Sequence[Path]) -> bool:
    return any(path == root or path.is_relative_to(root) for root in roots)


def map_prefix(path: str, prefix_map: Mapping[str, str]) -> str:
    """Translate a site path (p3s used /afs and /eos) to a local one; longest prefix first."""
    for old in sorted(prefix_map, key=len, reverse=True):
        if path == old or path.startswith(old.rstrip("/") + "/"):
            return prefix_map[old] + path[len(old.rstrip("/")) :]
    return path


def _resolve_executable(word: str, search_path: str | None) -> Path | None:
    if "/" in word:
        candidate = Path(word)
        return candidate.resolve() if candidate.is_file() else None
    found = shutil.which(word, path=search_path)
    return Path(found).resolve() if found else None


def resolve_command(
    payload: str,
    env: Mapping[str, str],
    *,
    roots: Sequence[Path],
    prefix_map: Mapping[str, str] | None = None,
    trusted: bool = False,
) -> Command:
    """Turn a job's payload string into a vetted command, or refuse it before anything runs.

    Args:
        payload: the job's ``payload`` field (an executable path with optional arguments).
        env: the job's environment; ``P3S_EXECMODE=SHELL`` asks for a shell.
        roots: resolved payload roots; the executable's real path must lie under one.
        prefix_map: site path prefixes to translate first (``/afs/...`` -> a local folder).
        trusted: the job comes from a registered workflow template, so a shell is allowed.

    Raises:
        PayloadRefused: with a sentence that names the payload and what to do.
    """
    text = payload.strip()
    if not text:
        raise PayloadRefused("the job has an empty payload; give the path of an executable")
    shell = env.get("P3S_EXECMODE", "").upper() == "SHELL"
    if shell and not trusted:
        raise PayloadRefused(
            "P3S_EXECMODE=SHELL is honoured only for jobs from registered workflow templates; "
            "ad hoc jobs run as an argument list: remove P3S_EXECMODE from env",
            field="env",
        )
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise PayloadRefused(f"payload {text!r} cannot be split into arguments: {exc}") from None
    first = map_prefix(words[0], prefix_map or {})
    executable = _resolve_executable(first, env.get("PATH", os.environ.get("PATH")))
    if executable is None:
        raise PayloadRefused(f"payload executable {first!r} does not exist or is not on PATH")
    if not _under(executable, roots):
        allowed = ", ".join(str(root) for root in roots) or "(none configured)"
        raise PayloadRefused(
            f"payload {str(executable)!r} is outside the payload roots ({allowed}); "
            "install it under a root or add its folder to P3S_PAYLOAD_ROOTS"
        )
    if not os.access(executable, os.X_OK):
        raise PayloadRefused(f"payload {str(executable)!r} is not executable (chmod +x it)")
    if shell:
        # The template's own command line, trusted by registration; the first word is vetted.
        return Command(argv=("/bin/sh", "-c", text), executable=executable, shell=True)
    return Command(argv=(str(executable), *words[1:]), executable=executable)
