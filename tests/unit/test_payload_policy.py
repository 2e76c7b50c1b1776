"""Only payloads under the payload roots run, and never through a shell unless trusted."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from p3s.jobs.policy import PayloadRefused, map_prefix, resolve_command


@pytest.fixture
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "payloads"
    folder.mkdir()
    script = folder / "job.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o755)
    (folder / "data.txt").write_text("not executable")
    return folder.resolve()


def test_argument_list_keeps_arguments_literal(root: Path) -> None:
    cmd = resolve_command(f"{root}/job.sh 'a b' ';rm -rf /' $HOME", {}, roots=[root])
    assert cmd.argv == (str(root / "job.sh"), "a b", ";rm -rf /", "$HOME")
    assert not cmd.shell


def test_outside_the_roots_is_refused(root: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.sh"
    other.write_text("#!/bin/sh\n")
    other.chmod(0o755)
    with pytest.raises(PayloadRefused, match="outside the payload roots"):
        resolve_command(str(other), {}, roots=[root])


def test_dot_dot_and_symlinks_cannot_escape(root: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.sh"
    other.write_text("#!/bin/sh\n")
    other.chmod(0o755)
    with pytest.raises(PayloadRefused, match="outside"):
        resolve_command(f"{root}/../other.sh", {}, roots=[root])
    (root / "link.sh").symlink_to(other)
    with pytest.raises(PayloadRefused, match="outside"):
        resolve_command(f"{root}/link.sh", {}, roots=[root])


def test_bare_names_are_looked_up_on_path_and_still_checked(root: Path) -> None:
    with pytest.raises(PayloadRefused, match="outside"):
        resolve_command("true", {}, roots=[root])
    cmd = resolve_command("job.sh x", {"PATH": str(root)}, roots=[root])
    assert cmd.argv == (str(root / "job.sh"), "x")


@pytest.mark.parametrize(
    ("payload", "match"),
    [("", "empty payload"), ("/nonexistent/x", "does not exist"), ("'unclosed", "cannot be split")],
)
def test_unusable_payloads_are_refused(root: Path, payload: str, match: str) -> None:
    with pytest.raises(PayloadRefused, match=match):
        resolve_command(payload, {}, roots=[root])


def test_non_executable_is_refused(root: Path) -> None:
    with pytest.raises(PayloadRefused, match="not executable"):
        resolve_command(f"{root}/data.txt", {}, roots=[root])


def test_shell_mode_only_for_trusted_templates(root: Path) -> None:
    env = {"P3S_EXECMODE": "SHELL"}
    with pytest.raises(PayloadRefused, match="registered workflow templates"):
        resolve_command(f"{root}/job.sh > out.txt", env, roots=[root])
    cmd = resolve_command(f"{root}/job.sh > out.txt", env, roots=[root], trusted=True)
    assert cmd.shell and cmd.argv == ("/bin/sh", "-c", f"{root}/job.sh > out.txt")


def test_site_prefixes_are_mapped_to_local_roots(root: Path) -> None:
    site = "/afs/cern.ch/user/n/np04dqm/public/p3s/p3s/inputs"
    assert map_prefix(f"{site}/x/y.sh", {site: "/opt/p"}) == "/opt/p/x/y.sh"
    assert map_prefix(f"{site}other/y.sh", {site: "/opt/p"}) == f"{site}other/y.sh"
    cmd = resolve_command(f"{site}/job.sh", {}, roots=[root], prefix_map={site: str(root)})
    assert cmd.executable == root / "job.sh"


def test_roots_setting_accepts_pathsep_and_json(monkeypatch: pytest.MonkeyPatch) -> None:
    from p3s.system.settings import Settings

    monkeypatch.setenv("P3S_PAYLOAD_ROOTS", os.pathsep.join(["/usr/bin", "/opt"]))
    assert Settings().payload_roots == [Path("/usr/bin"), Path("/opt")]
    monkeypatch.setenv("P3S_PAYLOAD_ROOTS", '["/usr/bin"]')
    assert Settings().payload_roots == [Path("/usr/bin")]


@pytest.mark.parametrize("shell", [False, True], ids=["argument-list", "trusted-shell"])
def test_env_values_reach_the_payload_as_data_never_as_code(
    root: Path, tmp_path: Path, shell: bool
) -> None:
    """A job's env values are free text: they go into the payload's environment, and even a
    trusted template's shell only expands them, it never runs what they hold."""
    import logging

    from p3s.flows.job import job_environment

    from p3s.jobs.model import P3SJob
    from p3s.jobs.process import execute_payload

    marker = tmp_path / "pwned"
    script = root / "print_x.sh"
    script.write_text('#!/bin/sh\nprintf "%s|%s" "$X" "$*"\n')
    script.chmod(0o755)
    value = f"; touch {marker} $(touch {marker}) `touch {marker}` && touch {marker}"
    env = {"X": value, **({"P3S_EXECMODE": "SHELL"} if shell else {})}
    job = P3SJob(name="v", timeout=30, jobtype="t", payload=f"{script} $X", env=env)
    command = resolve_command(job.payload, job.env, roots=[root], trusted=shell)
    assert command.shell is shell
    outcome = execute_payload(
        command,
        job_environment(job, "uuid", {}),
        timeout_s=30,
        log_dir=tmp_path / "logs",
        logger=logging.getLogger("test"),
    )
    assert outcome.exit_code == 0
    shown, args = Path(outcome.stdout_path).read_text().split("|", 1)
    assert shown == value
    # As an argument list "$X" is the literal word; the shell splits the value into words.
    assert args == ("$X" if not shell else " ".join(value.split()))
    assert not marker.exists()
