"""Accounting after a fault: every job's final state and its payload's executions, and the
report of what was injected and what was recovered.

A job is accounted for when its flow run is final and either Completed after exactly one
finished execution of its payload (earlier executions killed by the fault, never two at once),
or Failed/Crashed/Cancelled with a message an operator can read.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


@dataclass
class Execution:
    start: float
    pid: int
    end: float | None = None


def executions(log: Path) -> dict[str, list[Execution]]:
    """Job uuid -> its executions, in order, from an exec_record.sh log."""
    found: dict[str, list[Execution]] = {}
    if not log.exists():
        return found
    for line in log.read_text().splitlines():
        job, what, when, pid = line.split()
        runs = found.setdefault(job, [])
        if what == "start":
            runs.append(Execution(float(when), int(pid)))
        else:
            match = [e for e in runs if e.pid == int(pid) and e.end is None]
            assert match, f"an end without a start: {line}"
            match[-1].end = float(when)
    return found


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def final_runs(
    run_ids: list[uuid.UUID], timeout_s: float, poll_s: float = 2.0
) -> dict[uuid.UUID, Any]:
    """The flow runs, once all are final or ``timeout_s`` passed (what is not final is lost).

    Unlike ``wait_for_jobs`` it rides out an API that does not answer for a while.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    deadline = time.monotonic() + timeout_s
    runs: dict[uuid.UUID, Any] = {}
    while True:
        try:
            async with get_client() as client:
                for start in range(0, len(run_ids), 200):
                    chunk = run_ids[start : start + 200]
                    for run in await client.read_flow_runs(
                        flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=chunk)),
                        limit=len(chunk),
                    ):
                        runs[run.id] = run
        except Exception:  # noqa: BLE001 - the server or its database may be down: poll again
            pass
        done = [r for r in runs.values() if r.state and r.state.type.value in FINAL]
        if len(done) == len(run_ids) or time.monotonic() > deadline:
            return runs
        await asyncio.sleep(poll_s)


@dataclass
class FaultRecord:
    """One fault: what was injected, when, and what the system made of its jobs."""

    name: str
    started: float = field(default_factory=time.monotonic)
    injected: list[tuple[float, str]] = field(default_factory=list)
    recovered_at: float | None = None
    submitted: int = 0
    completed: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    executions: int = 0
    killed_executions: int = 0
    duplicates: list[str] = field(default_factory=list)
    overlapping: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    unexplained: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    outcome: str = "not finished"

    def inject(self, what: str) -> None:
        self.injected.append((time.monotonic(), what))

    @property
    def recover_s(self) -> float | None:
        if self.recovered_at is None or not self.injected:
            return None
        return self.recovered_at - self.injected[0][0]

    def problems(self) -> list[str]:
        out = []
        if self.lost:
            out.append(f"{len(self.lost)} lost (not final): {self.lost[:5]}")
        if self.duplicates:
            out.append(f"{len(self.duplicates)} executed to the end more than once: "
                       f"{self.duplicates[:5]}")  # fmt: skip
        if self.overlapping:
            out.append(f"{len(self.overlapping)} executed twice at once: {self.overlapping[:5]}")
        if self.unexplained:
            out.append(f"{len(self.unexplained)} unexplained: {self.unexplained[:5]}")
        return out

    def account_jobs(self, runs: dict[uuid.UUID, Any], run_ids: list[uuid.UUID], log: Path):
        """Account for p3s jobs whose payload is exec_record.sh writing to ``log``."""
        self.recovered_at = time.monotonic()
        self.submitted += len(run_ids)
        seen = executions(log)
        for run_id in run_ids:
            run = runs.get(run_id)
            key = str(run_id)
            if run is None or run.state is None or run.state.type.value not in FINAL:
                self.lost.append(f"{key} ({run.state.name if run and run.state else 'unknown'})")
                continue
            tries = seen.get(key, [])
            finished = [e for e in tries if e.end is not None]
            self.executions += len(tries)
            self.killed_executions += len(tries) - len(finished)
            if len(finished) > 1:
                self.duplicates.append(key)
            for one in tries:  # a killed try must be over, and over before the next began
                if one.end is None and _alive(one.pid):
                    self.overlapping.append(f"{key} (pid {one.pid} still runs)")
            spans = sorted((e.start, e.end or e.start) for e in tries)
            for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
                if start < end:
                    self.overlapping.append(key)
            state = run.state.type.value
            if state == "COMPLETED":
                self.completed += 1
                if len(finished) != 1:
                    self.unexplained.append(f"{key} Completed after {len(finished)} executions")
            else:
                reason = (run.state.message or "").strip()
                if not reason:
                    self.unexplained.append(f"{key} {run.state.name} without a message")
                self.failed[f"{run.state.name}: {reason[:160] or '(no message)'}"] += 1

    def markdown(self) -> str:
        t0 = self.started
        lines = [f"## {self.name}", "", f"Outcome: **{self.outcome}**", "", "Injected:", ""]
        lines += [f"- t+{when - t0:.1f} s: {what}" for when, what in self.injected] or ["- -"]
        recover = f"{self.recover_s:.1f} s" if self.recover_s is not None else "-"
        lines += [
            "",
            "| submitted | completed | failed | executions | killed executions | duplicates "
            "| concurrent | lost | time to recover |",
            "|---|---|---|---|---|---|---|---|---|",
            f"| {self.submitted} | {self.completed} | {sum(self.failed.values())} | "
            f"{self.executions} | {self.killed_executions} | {len(self.duplicates)} | "
            f"{len(self.overlapping)} | {len(self.lost)} | {recover} |",
            "",
        ]
        if self.failed:
            lines += ["Failed, with the reason the operator reads:", ""]
            lines += [f"- {n} × {reason}" for reason, n in self.failed.most_common()]
            lines.append("")
        for problem in self.problems():
            lines.append(f"- PROBLEM: {problem}")
        lines += [f"- {note}" for note in self.notes]
        return "\n".join(lines).rstrip() + "\n"

    def summary(self) -> str:
        recover = f"{self.recover_s:.0f} s" if self.recover_s is not None else "-"
        return (
            f"{self.name}: {self.outcome}; {self.submitted} submitted, {self.completed} "
            f"completed, {sum(self.failed.values())} failed with a reason, "
            f"{len(self.duplicates)} duplicated, {len(self.lost)} lost, recovered in {recover}"
        )
