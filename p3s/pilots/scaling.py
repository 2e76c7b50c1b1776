"""How many pilots the backlog needs (p3s's p3calc: "required 100, running 99, submit 1").

Pure functions: the pilot worker gathers the numbers, these decide, the worker acts and
records each decision as a ``p3s.pilots.scaled`` event.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class ScaleDecision:
    """What to do with the pool now."""

    required: int
    running: int
    submit: int
    #: Names of idle pilots to retire.
    retire: tuple[str, ...]
    backlog: int
    in_flight: int

    @property
    def changes(self) -> bool:
        return bool(self.submit or self.retire)

    @property
    def message(self) -> str:
        words = f"required {self.required}, running {self.running}"
        if self.submit:
            words += f", submitting {self.submit}"
        if self.retire:
            words += f", retiring {len(self.retire)}"
        return words + f" (backlog {self.backlog}, in flight {self.in_flight})"


def required_pilots(
    backlog: int, in_flight: int, slots_per_pilot: int, min_pilots: int, max_pilots: int
) -> int:
    """Pilots that give every scheduled and running flow run a slot, within the bounds."""
    wanted = math.ceil((backlog + in_flight) / max(1, slots_per_pilot))
    return max(min_pilots, min(max_pilots, wanted))


def decide(
    *,
    backlog: int,
    in_flight: int,
    slots_per_pilot: int,
    min_pilots: int,
    max_pilots: int,
    held: int,
    idle_for: dict[str, float],
    starting: tuple[str, ...] = (),
    idle_seconds: float,
) -> ScaleDecision:
    """Grow at once to what the backlog needs; shrink only by pilots idle long enough.

    Args:
        backlog: scheduled flow runs due now in the pool.
        in_flight: flow runs claimed and not finished.
        held: pilots held now (starting, idle or running).
        idle_for: seconds each connected idle pilot has been idle, by name.
        starting: names of pilots submitted but not connected yet (retired first).
        idle_seconds: how long a pilot must be idle before it may be retired.
    """
    required = required_pilots(backlog, in_flight, slots_per_pilot, min_pilots, max_pilots)
    submit = max(0, required - held)
    retire: list[str] = []
    surplus = held - required
    if surplus > 0:
        # Pilots not yet started hold no work: drop them first, then the longest idle.
        retire.extend(starting[:surplus])
        idle = sorted(
            (name for name, seconds in idle_for.items() if seconds >= idle_seconds),
            key=lambda name: -idle_for[name],
        )
        retire.extend(idle[: surplus - len(retire)])
    return ScaleDecision(
        required=required,
        running=held,
        submit=submit,
        retire=tuple(retire),
        backlog=backlog,
        in_flight=in_flight,
    )


@dataclass
class BelowTarget:
    """An episode of fewer connected pilots than required, reported once when it outlasts
    ``tolerance_s`` (batch jobs take time to start: a short gap is normal)."""

    tolerance_s: float
    since: float | None = None
    reported: bool = False

    def update(self, now: float, connected: int, required: int) -> float | None:
        """Seconds below target when the episode is to be reported now; else None."""
        if connected >= required:
            self.since, self.reported = None, False
            return None
        if self.since is None:
            self.since = now
        if not self.reported and now - self.since >= self.tolerance_s:
            self.reported = True
            return now - self.since
        return None


def roll_call(
    seen: set[str], retiring: set[str], connected: set[str], held: set[str]
) -> tuple[set[str], set[str], list[str]]:
    """One look at the pilots: ``(seen, retiring, lost)`` after it (``seen``: those connected
    now).

    A pilot seen connected that is gone without having been retired is lost. A retired pilot
    stays ``retiring`` while it is held or connected: a pilot retired while it was starting
    may still connect, and is then closed by Dask; that is no loss.
    """
    lost = sorted(seen - connected - retiring)
    return set(connected), retiring & (held | connected), lost
