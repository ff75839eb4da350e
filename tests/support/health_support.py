"""Health verdicts judged from a state built in the test, at a fixed moment."""

from __future__ import annotations

from laterbased.config import Config
from laterbased.core.state import State
from laterbased.health import verdicts as health

NOW = 1_800_000_000.0


def checks_by_name(state: State, now: float = NOW) -> dict[str, health.Check]:
    return {check.name: check for check in health.evaluate(state, now)}


def ready_state(config: Config) -> State:
    """A daemon ten minutes up at :data:`NOW`, its primary answering (as a primary) five
    seconds ago: the rest is the test's to set."""
    state = State(config=config, started_at=NOW - 600)
    state.ready = True
    state.primary.reachable = True
    state.primary.last_ok = NOW - 5
    state.primary.in_recovery = False
    return state
