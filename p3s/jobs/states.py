"""p3s job state names beside Prefect's state types."""

from __future__ import annotations

from prefect.client.schemas.objects import State, StateType

#: p3s state shown for each Prefect state type (a time limit is a Failed state named TimeLimit).
P3S_STATE = {
    StateType.SCHEDULED: "defined",
    StateType.PENDING: "dispatched",
    StateType.RUNNING: "running",
    StateType.COMPLETED: "finished",
    StateType.FAILED: "failed",
    StateType.CRASHED: "pilotTO",
    StateType.CANCELLING: "cancelled",
    StateType.CANCELLED: "cancelled",
    StateType.PAUSED: "defined",
}

#: The p3s states a user may filter on, and the Prefect state types (and names) they cover.
P3S_FILTERS: dict[str, tuple[list[StateType], str | None]] = {
    "defined": ([StateType.SCHEDULED, StateType.PAUSED], None),
    "dispatched": ([StateType.PENDING], None),
    "running": ([StateType.RUNNING], None),
    "finished": ([StateType.COMPLETED], None),
    "failed": ([StateType.FAILED], None),
    "timelimit": ([StateType.FAILED], "TimeLimit"),
    "nonstarter": ([StateType.FAILED], "Refused"),
    "pilotTO": ([StateType.CRASHED], None),
    "cancelled": ([StateType.CANCELLED, StateType.CANCELLING], None),
}


def p3s_state(state: State | None) -> str:
    """The p3s name of a Prefect state ("timelimit" for a run stopped at its limit)."""
    if state is None:
        return "defined"
    if state.type == StateType.FAILED and state.name == "TimeLimit":
        return "timelimit"
    if state.type == StateType.FAILED and state.name == "Refused":
        return "nonstarter"
    return P3S_STATE.get(state.type, state.type.value.lower())
