"""Health verdicts: pure functions of (state, config, clock), so they test without servers.

Each enabled part of the daemon contributes one :class:`Check`. ``/healthz`` is 200 only
when every check is ok; otherwise 503 with the failing checks and why.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from .state import State

Severity = Literal["ok", "warning", "critical"]


@dataclass(frozen=True)
class Check:
    name: str
    severity: Severity
    reason: str

    @property
    def ok(self) -> bool:
        return self.severity == "ok"


def check_daemon(state: State, now: float) -> Check:
    if not state.ready:
        return Check("daemon", "critical", "starting up")
    return Check("daemon", "ok", f"up {now - state.started_at:.0f}s")


def check_primary(state: State, now: float) -> Check:
    primary = state.primary
    if primary.reachable is None:
        return Check("primary", "warning", "not polled yet")
    if not primary.reachable:
        return Check("primary", "critical", f"unreachable: {primary.last_error or 'unknown'}")
    return Check("primary", "ok", "reachable")


def evaluate(state: State, now: float) -> list[Check]:
    """All checks that apply to the current configuration, in a stable order."""
    checks = [check_daemon(state, now)]
    config = state.config
    if config.primary.host is not None:
        checks.append(check_primary(state, now))
    return checks


def is_healthy(checks: list[Check]) -> bool:
    return all(check.ok for check in checks)


def report(checks: list[Check]) -> dict[str, Any]:
    """The JSON body of ``/healthz``."""
    return {
        "status": "healthy" if is_healthy(checks) else "unhealthy",
        "checks": [asdict(check) | {"ok": check.ok} for check in checks],
        "failing": [check.name for check in checks if not check.ok],
    }
