"""``/status.json`` and ``/status``: what a human wants to know at 3 a.m., on one page.

The HTML page is self-contained (inline CSS, no scripts, no external assets) so it works on
an offline machine, refreshes itself every 10 seconds, and escapes every value it shows:
database names, error messages and hosts come from outside.
"""

from __future__ import annotations

import time
from datetime import datetime
from html import escape
from typing import Any
from zoneinfo import ZoneInfo

from aiohttp import web

from laterbased import __version__
from laterbased.core.failover import (
    old_primary_advice,
    workstation_address,
    workstation_steps,
    workstation_user,
)
from laterbased.core.state import GLOBALS_KEY, State
from laterbased.health import verdicts as health
from laterbased.units import format_duration, format_size
from laterbased.web.roles import local_role
from laterbased.web.server import STATE_KEY, json_response

REFRESH_SECONDS = 10
MAX_EVENTS = 20


def status_document(state: State, now: float) -> dict[str, Any]:
    """Everything the status page shows, as plain JSON-able data (no secrets)."""
    config = state.config
    primary, local, standby = state.primary, state.local, state.standby
    slot = primary.slot
    checks = health.evaluate(state, now)
    return {
        "generated_at": now,
        "version": __version__,
        "uptime_seconds": now - state.started_at,
        "role": local_role(state) if config.standby.enabled else "backup-only",
        "health": health.report(checks),
        "primary": {
            "host": config.primary.host,
            "port": config.primary.port,
            "reachable": primary.reachable,
            "last_error": primary.last_error,
            "last_error_reason": primary.last_error_reason,
            "server_version_num": primary.server_version_num,
            "system_identifier": primary.system_identifier,
            "current_lsn": primary.current_lsn,
            "replication_state": primary.replication_state,
            "replay_lag_seconds": primary.replay_lag_seconds,
        },
        "standby": {
            "enabled": config.standby.enabled,
            "phase": standby.phase,
            "pid": standby.pid,
            "message": standby.message,
            "restarts": dict(standby.restarts),
            "bootstrap_bytes_done": standby.bootstrap_bytes_done,
            "bootstrap_bytes_total": standby.bootstrap_bytes_total,
        },
        "replication": {
            "in_recovery": local.in_recovery,
            "streaming": health.is_streaming(state),
            "receiver_status": local.receiver_status,
            "replay_paused": local.replay_paused,
            "sender_host": local.sender_host,
            "receive_lsn": local.receive_lsn,
            "replay_lsn": local.replay_lsn,
            "last_replay_timestamp": local.last_replay_timestamp,
            "lag_bytes": local.lag_bytes,
            "lag_seconds": local.lag_seconds,
        },
        "slot": None
        if slot is None
        else {
            "name": slot.name,
            "exists": slot.exists,
            "active": slot.active,
            "restart_lsn": slot.restart_lsn,
            "retained_bytes": slot.retained_bytes,
            "wal_status": slot.wal_status,
            "safe_wal_size": slot.safe_wal_size,
        },
        "backups": [
            {
                "database": summary.label,
                "globals": summary.is_globals,
                "last_success": summary.last_success,
                "last_size": summary.last_size,
                "local_count": summary.local_count,
                "pending_upload": summary.pending_upload,
                "last_failure": summary.last_failure,
                "last_error": summary.last_error,
                "gone": summary.gone,
            }
            for summary in (state.backups[name] for name in sorted(state.backups))
        ],
        "jobs": [
            {
                "job": name,
                "next_fire": job.next_fire,
                "running": job.running is not None,
                "last_result": job.last_run.result if job.last_run else None,
                "last_success": job.last_success,
                "last_duration": job.last_duration,
            }
            for name, job in sorted(state.jobs.items())
        ],
        "events": [
            {"at": event.at, "level": event.level, "message": event.message}
            for event in list(state.events)[::-1][:MAX_EVENTS]
        ],
        "failover": failover_document(state),
        "pitr": pitr_document(state),
    }


def pitr_document(state: State) -> dict[str, Any]:
    """The window a restore to a moment can reach now (ISO 8601 UTC; nulls when off or
    before the first base backup), and the archive's facts."""
    archive = state.archive
    return {
        "enabled": state.config.pitr.enabled,
        "earliest": health.iso_utc(archive.earliest),
        "latest": health.iso_utc(archive.latest),
        "phase": archive.phase,
        "last_segment": archive.last_segment,
        "last_receive": health.iso_utc(archive.last_receive),
        "restarts": archive.restarts,
        "base_backups": archive.base_backups,
        # Base backups and finished WAL not off-site yet (null when the upload is off).
        "pending_upload": archive.pending_upload if state.config.upload.enabled else None,
        "gaps": [list(gap) for gap in archive.gaps],
        "slot": None
        if archive.slot is None
        else {
            "name": archive.slot.name,
            "exists": archive.slot.exists,
            "active": archive.slot.active,
            "retained_bytes": archive.slot.retained_bytes,
            "wal_status": archive.slot.wal_status,
        },
        "ranges": [
            {"earliest": health.iso_utc(earliest), "latest": health.iso_utc(latest)}
            for earliest, latest in archive.ranges
        ],
    }


def failover_document(state: State) -> dict[str, Any] | None:
    """After a promotion: what each workstation enters in Resolve, and what to do with the
    old primary (the same text ``laterbased promote`` prints). None before."""
    config, standby = state.config, state.standby
    if not config.standby.enabled or not health.is_promoted(state):
        return None
    port = standby.port or config.standby.promoted_port
    libraries = list(standby.libraries) or [
        name for name in health.backup_databases(state) if name != GLOBALS_KEY
    ]
    return {
        "address": workstation_address(config),
        "port": port,
        "listen_addresses": standby.listen_addresses,
        "libraries": libraries,
        "user": workstation_user(config, standby.library_owners),
        "problem": standby.failover_problem,
        "workstations": workstation_steps(config, libraries, port, standby.library_owners),
        "old_primary": old_primary_advice(config),
    }


async def status_json_endpoint(request: web.Request) -> web.Response:
    return json_response(status_document(request.app[STATE_KEY], time.time()))


async def status_page_endpoint(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    page = render_status_page(status_document(state, time.time()), state.config.zone)
    return web.Response(text=page, content_type="text/html", charset="utf-8")


# --- HTML -------------------------------------------------------------------------------

_CSS = """
body{font:15px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.4em;margin:0 0 .3em}h2{font-size:1.1em;margin:1.2em 0 .3em}
table{border-collapse:collapse;margin:.2em 0}td,th{padding:.2em .8em .2em 0;text-align:left;
vertical-align:top}th{color:#555;font-weight:600}.ok{color:#17702a}.warning{color:#a65f00}
.critical,.error{color:#b00020;font-weight:600}.muted{color:#777}
.badge{display:inline-block;padding:.1em .6em;border-radius:.3em;color:#fff}
.badge.ok{background:#17702a}.badge.bad{background:#b00020}code{font-size:.95em}
"""


def _text(value: object) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"  # not Python's "True"/"False"
    return escape(str(value))


def _safe_wal_size(slot: dict[str, Any]) -> str:
    # PostgreSQL reports NULL for a slot that is not lost when max_slot_wal_keep_size is
    # -1: nothing caps what the slot may retain. Say so instead of showing a bare dash.
    if slot["safe_wal_size"] is None and slot["wal_status"] not in (None, "lost"):
        return "unlimited (max_slot_wal_keep_size not set on the primary)"
    return _size(slot["safe_wal_size"])


def _epoch(iso: str | None) -> float | None:
    return None if iso is None else datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _pitr_section(pitr: dict[str, Any], zone: ZoneInfo, now: float) -> str:
    """The undo window: what ``restore --at`` can give back to the second."""
    if pitr["earliest"] is None:
        window = "<span class=warning>nothing restorable to the second yet</span>"
    else:
        window = (
            f"{_when(_epoch(pitr['earliest']), zone, now)} to "
            f"{_when(_epoch(pitr['latest']), zone, now)}"
        )
    gaps = ", ".join(f"{first} to {last}" for first, last in pitr["gaps"])
    rows = [
        ("Restorable (restore --at)", f"<span id=pitr-window>{window}</span>"),
        ("WAL archive", _text(pitr["phase"])),
        ("Last WAL received", _when(_epoch(pitr["last_receive"]), zone, now)),
        ("Base backups", _text(pitr["base_backups"])),
    ]
    if pitr.get("pending_upload") is not None:
        rows.append(("Waiting for upload", _text(pitr["pending_upload"])))
    if gaps:
        rows.append(("Missing WAL segments", f"<span class=critical>{escape(gaps)}</span>"))
    return "<h2>Undo window</h2><table id=pitr>" + _rows(rows) + "</table>"


def _when(timestamp: float | None, zone: ZoneInfo, now: float) -> str:
    if timestamp is None:
        return "–"
    moment = datetime.fromtimestamp(timestamp, zone).strftime("%Y-%m-%d %H:%M:%S %Z")
    delta = timestamp - now
    relative = f"in {format_duration(delta)}" if delta > 0 else f"{format_duration(-delta)} ago"
    return f"{escape(moment)} <span class=muted>({escape(relative)})</span>"


# Jobs without a schedule of their own: they run as part of, or right after, each dump.
FOLLOWS_DUMP = {"prune": "after each dump", "upload": "after each dump"}


def _next_run(job: str, timestamp: float | None, zone: ZoneInfo, now: float) -> str:
    if timestamp is None and job in FOLLOWS_DUMP:
        return f"<span class=muted>{FOLLOWS_DUMP[job]}</span>"
    return _when(timestamp, zone, now)


def _size(value: int | None) -> str:
    return "–" if value is None else escape(format_size(value))


def _rows(pairs: list[tuple[str, str]]) -> str:
    return "".join(f"<tr><th>{escape(k)}</th><td>{v}</td></tr>" for k, v in pairs)


def render_status_page(doc: dict[str, Any], zone: ZoneInfo) -> str:
    """The HTML page for ``doc`` (from :func:`status_document`); every value escaped."""
    now = float(doc["generated_at"])
    healthy = doc["health"]["status"] == "healthy"
    replication, primary, standby = doc["replication"], doc["primary"], doc["standby"]
    lag_seconds = replication["lag_seconds"]
    lag = (
        f"{_size(replication['lag_bytes'])}"
        f"{'' if lag_seconds is None else ' / ' + escape(format_duration(lag_seconds))}"
    )
    if replication.get("replay_paused"):
        lag += " <span class=warning id=replay-paused>replay paused</span>"
    standby_cell = _text(standby["phase"])
    if standby["message"]:
        standby_cell += f" <span class=muted>{_text(standby['message'])}</span>"
    primary_cell = f"{_text(primary['host'])}:{_text(primary['port'])} — "
    if primary["reachable"]:
        primary_cell += "reachable"
    elif primary["reachable"] is False:
        # A refused login is not a network problem: say which one it is.
        verdict = "login refused" if primary["last_error_reason"] == "auth" else "unreachable"
        primary_cell += f"<span class=critical>{verdict}</span> {_text(primary['last_error'])}"
    else:
        primary_cell += "not polled yet"
    uptime = escape(format_duration(doc["uptime_seconds"]))
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">',
        '<meta name="viewport" content="width=device-width,initial-scale=1">',
        f"<title>laterbased: {'healthy' if healthy else 'UNHEALTHY'}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>laterbased <span class=\"badge {'ok' if healthy else 'bad'}\" id=health>"
        f"{'healthy' if healthy else 'unhealthy'}</span></h1>",
        "<table>",
        _rows(
            [
                ("Role", f"<span id=role>{_text(doc['role'])}</span>"),
                ("Replication lag", f"<span id=lag>{lag}</span>"),
                (
                    "Streaming",
                    _text(replication["streaming"])
                    if standby["enabled"]
                    else "<span class=muted>no standby configured (backups only)</span>",
                ),
                ("Standby", standby_cell),
                ("Primary", primary_cell),
                ("laterbased", f"{_text(doc['version'])}, up {uptime}"),
            ]
        ),
        "</table>",
    ]
    failover = doc.get("failover")
    if failover:
        # At 3 a.m. this is what the page is for: the steps first, before the details.
        parts.append("<h2>After the failover</h2><div id=failover>")
        if failover["problem"]:
            parts.append(f"<p class=critical>{_text(failover['problem'])}</p>")
        parts.append("<pre>" + escape("\n".join(failover["workstations"])) + "</pre>")
        parts.append(f"<p>{_text(failover['old_primary'])}</p></div>")
    parts.append("<h2>Checks</h2><table id=checks>")
    for check in doc["health"]["checks"]:
        severity = escape(check["severity"])
        parts.append(
            f"<tr><th>{_text(check['name'])}</th><td class={severity}>{severity}</td>"
            f"<td>{_text(check['reason'])}</td></tr>"
        )
    parts.append("</table><h2>Replication slot</h2>")
    slot = doc["slot"]
    if slot is None:
        parts.append("<p class=muted>not checked</p>")
    else:
        parts += [
            "<table id=slot>",
            _rows(
                [
                    ("Name", _text(slot["name"])),
                    ("Exists", _text(slot["exists"])),
                    ("Active", _text(slot["active"])),
                    ("Retained WAL", _size(slot["retained_bytes"])),
                    ("wal_status", _text(slot["wal_status"])),
                    ("Safe WAL size", _safe_wal_size(slot)),
                ]
            ),
            "</table>",
        ]
    parts.append("<h2>Last backups</h2>")
    if not doc["backups"]:
        parts.append("<p class=muted>no backups yet</p>")
    else:
        parts.append(
            "<table id=backups><tr><th>Database</th><th>Last good</th><th>Size</th>"
            "<th>Kept</th><th>Waiting upload</th><th>Last error</th></tr>"
        )
        for backup in doc["backups"]:
            last = f"<td class=error>{_text(backup['last_error'] or '')}</td>"
            if backup.get("gone"):
                # Discovery no longer finds it: its backups are kept, nothing is retried.
                last = "<td class=muted>database gone (no longer on the primary)</td>"
            parts.append(
                f"<tr><td>{_text(backup['database'])}</td>"
                f"<td>{_when(backup['last_success'], zone, now)}</td>"
                f"<td>{_size(backup['last_size'])}</td><td>{_text(backup['local_count'])}</td>"
                f"<td>{_text(backup['pending_upload'])}</td>{last}</tr>"
            )
        parts.append("</table>")
    pitr = doc.get("pitr")
    if pitr and pitr["enabled"]:
        parts.append(_pitr_section(pitr, zone, now))
    parts.append("<h2>Scheduled jobs</h2>")
    if not doc["jobs"]:
        parts.append("<p class=muted>none</p>")
    else:
        parts.append(
            "<table id=jobs><tr><th>Job</th><th>Next run</th><th>Last result</th>"
            "<th>Last success</th></tr>"
        )
        for job in doc["jobs"]:
            running = " <b>(running)</b>" if job["running"] else ""
            parts.append(
                f"<tr><td>{_text(job['job'])}{running}</td>"
                f"<td>{_next_run(job['job'], job['next_fire'], zone, now)}</td>"
                f"<td>{_text(job['last_result'])}</td>"
                f"<td>{_when(job['last_success'], zone, now)}</td></tr>"
            )
        parts.append("</table>")
    parts.append("<h2>Recent events</h2>")
    if not doc["events"]:
        parts.append("<p class=muted>none</p>")
    else:
        parts.append("<table id=events>")
        for event in doc["events"]:
            level = escape(event["level"])
            parts.append(
                f"<tr><td>{_when(event['at'], zone, now)}</td><td class={level}>{level}</td>"
                f"<td>{_text(event['message'])}</td></tr>"
            )
        parts.append("</table>")
    parts.append(
        f"<p class=muted>Refreshes every {REFRESH_SECONDS}s · "
        '<a href="status.json">status.json</a> · <a href="metrics">metrics</a> · '
        '<a href="healthz">healthz</a></p></body></html>'
    )
    return "".join(parts)
