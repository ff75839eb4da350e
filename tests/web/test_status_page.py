"""The status page as an operator reads it: yes and no (not Python's True and False), an
uncapped slot named as such, a backups-only daemon that is not a fault, a refused login that
is not an unreachable primary."""

from __future__ import annotations

from laterbased.config import Config, PrimaryConfig, StandbyConfig
from laterbased.core.state import SlotState, State
from laterbased.web.status import render_status_page, status_document


def test_status_page_speaks_yes_no_and_names_an_uncapped_slot() -> None:
    # The page showed "Streaming True", "Exists True" and "Safe WAL size –" in the demo: Python
    # spelling, and a dash where the fact is that nothing caps the slot's WAL on the primary.
    state = State(config=Config(primary=PrimaryConfig(host="resolve.local"), timezone="UTC"))
    state.primary.reachable = True
    state.primary.slot = SlotState(
        name="laterbase_standby_slot",
        exists=True,
        active=False,
        retained_bytes=0,
        wal_status="reserved",
        safe_wal_size=None,
    )
    page = render_status_page(status_document(state, state.started_at + 5), state.config.zone)
    assert "True" not in page and "False" not in page
    assert "<th>Exists</th><td>yes</td>" in page
    assert "<th>Active</th><td>no</td>" in page
    assert "unlimited (max_slot_wal_keep_size not set on the primary)" in page


def test_status_page_of_a_backup_only_daemon_with_a_refused_login() -> None:
    # A backups-only daemon showed "Streaming: no" (reads as a fault) and a wrong password
    # showed "Primary: unreachable".
    state = State(
        config=Config(
            primary=PrimaryConfig(host="resolve.local"),
            standby=StandbyConfig(enabled=False),
            timezone="UTC",
        )
    )
    state.primary.reachable = False
    state.primary.last_error = 'password authentication failed for user "postgres"'
    state.primary.last_error_reason = "auth"
    page = render_status_page(status_document(state, state.started_at + 5), state.config.zone)
    assert "no standby configured (backups only)" in page
    assert "<span class=critical>login refused</span>" in page
    assert ">unreachable<" not in page
