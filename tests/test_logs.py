"""Logs: one line per event, JSON on request, and secrets masked whatever the path."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
from config_support import quiet_config

from laterbased.config import PrimaryConfig, Secret
from laterbased.daemon import Daemon
from laterbased.logs import SecretMasker, masker, setup_logging


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    setup_logging("debug", "text", stream)
    masker.set_secrets(["p@ss w'o\"rd", "rclone-secret"])
    try:
        yield stream
    finally:
        masker.set_secrets([])
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved_handlers:
            root.addHandler(handler)
        root.setLevel(saved_level)


def test_secret_in_arguments_is_masked(captured: io.StringIO) -> None:
    logging.getLogger("laterbased.test").info("connecting with password=%s", "p@ss w'o\"rd")
    out = captured.getvalue()
    assert "p@ss" not in out
    assert "password=********" in out


def test_secret_in_exception_text_is_masked(captured: io.StringIO) -> None:
    try:
        raise RuntimeError("rclone failed: key rclone-secret rejected")
    except RuntimeError:
        logging.getLogger("laterbased.test").exception("upload failed")
    out = captured.getvalue()
    assert "rclone-secret" not in out
    assert "upload failed" in out and "RuntimeError" in out


def test_json_format_is_one_object_per_line() -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = list(root.handlers)
    try:
        setup_logging("info", "json", stream)
        masker.set_secrets(["hunter2"])
        logging.getLogger("laterbased.x").warning("dump failed database=%s pw=%s", "a b", "hunter2")
    finally:
        masker.set_secrets([])
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved:
            root.addHandler(handler)
    (line,) = stream.getvalue().splitlines()
    record = json.loads(line)
    assert record["level"] == "warning"
    assert record["logger"] == "laterbased.x"
    assert record["message"] == "dump failed database=a b pw=********"


def test_masker_ignores_values_too_short_to_mask_safely() -> None:
    local = SecretMasker()
    local.set_secrets(["ab", "longer-secret"])
    assert local.mask("ab longer-secret") == "ab ********"


def test_masking_leaves_the_record_intact_for_other_handlers(
    captured: io.StringIO, caplog: pytest.LogCaptureFixture
) -> None:
    try:
        raise ValueError("bad value rclone-secret")
    except ValueError:
        logging.getLogger("laterbased.test").exception("step failed")
    assert "rclone-secret" not in captured.getvalue()
    (record,) = [r for r in caplog.records if r.message == "step failed"]
    assert record.exc_info is not None  # pytest's handler still sees the traceback


def test_setup_logging_keeps_handlers_it_did_not_install() -> None:
    root = logging.getLogger()
    foreign = logging.NullHandler()
    root.addHandler(foreign)
    saved = list(root.handlers)
    try:
        first = setup_logging("info", "text", io.StringIO())
        second = setup_logging("info", "text", io.StringIO())
        assert foreign in root.handlers
        assert second in root.handlers and first not in root.handlers
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved:
            if handler is not foreign:
                root.addHandler(handler)


def test_a_password_introduced_by_a_reload_is_masked_from_then_on(
    captured: io.StringIO,
) -> None:
    # The masker learns the secrets at start; a password first set by a SIGHUP reload (the
    # operator fixing a wrong one) must be masked as well, in every later line.
    new_password = "reloaded-Pa55word"  # noqa: S105 - a test value
    reloaded = quiet_config(
        primary=PrimaryConfig(host="127.0.0.1", password=Secret(new_password))
    )
    daemon = Daemon(quiet_config(), loader=lambda: reloaded)
    assert daemon.reload()
    assert daemon.state.config is reloaded
    logging.getLogger("laterbased.test").error("primary refused password=%s", new_password)
    out = captured.getvalue()
    assert "primary refused password=********" in out
    assert new_password not in out


def test_a_secret_that_contains_another_is_masked_whole(captured: io.StringIO) -> None:
    # Masking the shorter one first would leave the longer one's rest readable around the
    # mask ("admin-********-2024" gives most of the password away).
    masker.set_secrets(["hunter2", "admin-hunter2-2024"])
    logging.getLogger("laterbased.test").warning("login with %s refused", "admin-hunter2-2024")
    out = captured.getvalue()
    assert "login with ******** refused" in out
    assert "admin-" not in out and "-2024" not in out
