"""Logging setup: one line per event, text or JSON, secrets masked on the way out."""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TextIO

from aiohttp.http_exceptions import HttpProcessingError

MASK = "********"


class SecretMasker:
    """Replace every known secret in a formatted log line with a mask.

    Applied by our formatters to the finished text, after %-formatting and the traceback,
    so a secret that slipped into an argument, an exception text or a child's stderr is
    still caught. The record itself is never changed: other handlers (pytest's caplog, a
    library's own) see it as it was.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._secrets: tuple[str, ...] = ()

    def set_secrets(self, secrets: Iterable[str]) -> None:
        # Longest first, so a secret containing another is masked whole. Very short values
        # would mask innocent text everywhere, so they are left out.
        unique = {s for s in secrets if len(s) >= 3}
        with self._lock:
            self._secrets = tuple(sorted(unique, key=len, reverse=True))

    def mask(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text


class MaskedTextFormatter(logging.Formatter):
    """The readable one-line format, with secrets masked in the finished line."""

    def format(self, record: logging.LogRecord) -> str:
        return masker.mask(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers (Loki, Vector, journald's JSON mode)."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": masker.mask(record.getMessage()),
        }
        run_id = getattr(record, "run_id", None)
        if run_id:
            payload["run_id"] = run_id
        if record.exc_info:
            payload["exception"] = masker.mask(self.formatException(record.exc_info))
        elif record.exc_text:
            payload["exception"] = masker.mask(record.exc_text)
        return json.dumps(payload, ensure_ascii=False)


class QuietBadRequests(logging.Filter):
    """aiohttp logs a full traceback at ERROR for every malformed request (a header over
    8 KiB, garbage on the port). The client already got its 400; for us that is a debug
    line, not an error an operator should be woken by."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None or not isinstance(exc, HttpProcessingError):
            return True
        if not logging.getLogger().isEnabledFor(logging.DEBUG):
            return False
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        record.msg = "bad HTTP request rejected: %s"
        record.args = (reason[:200],)
        record.exc_info = None
        record.exc_text = None
        record.levelno = logging.DEBUG
        record.levelname = "DEBUG"
        return True


TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"

masker = SecretMasker()


class OurHandler(logging.StreamHandler[TextIO]):
    """Our one handler. Without an explicit stream it writes to whatever ``sys.stderr`` is
    at the time of each record (it may be replaced after set-up, e.g. by pytest)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__(stream or sys.stderr)
        self._follow_stderr = stream is None

    def emit(self, record: logging.LogRecord) -> None:
        if self._follow_stderr:
            self.stream = sys.stderr
        super().emit(record)


def setup_logging(
    level: str = "info", fmt: str = "text", stream: TextIO | None = None
) -> logging.Handler:
    """Install our handler on the root logger (replacing an earlier one of ours, leaving
    other handlers alone) and return it."""
    handler = OurHandler(stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else MaskedTextFormatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        if isinstance(old, OurHandler):
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # aiohttp logs every request at INFO; that is noise next to our own events.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    server_logger = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, QuietBadRequests) for f in server_logger.filters):
        server_logger.addFilter(QuietBadRequests())
    return handler
