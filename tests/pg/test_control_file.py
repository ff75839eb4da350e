"""The system identifier read from a data directory's ``global/pg_control``, with no server
running: what the standby's checks and the first contact with a primary compare."""

from __future__ import annotations

import struct
from pathlib import Path

from pgserver import PgServer

from laterbased.pg import control_file


def test_system_identifier_is_the_one_the_server_itself_reports(primary: PgServer) -> None:
    reported = primary.sql("SELECT system_identifier FROM pg_control_system()")
    assert control_file.system_identifier(primary.data_dir) == reported


def test_system_identifier_is_the_first_field_of_pg_control(tmp_path: Path) -> None:
    (tmp_path / "global").mkdir()
    (tmp_path / "global" / "pg_control").write_bytes(struct.pack("=Q", 7301234567890123456) + b"x")
    assert control_file.system_identifier(tmp_path) == "7301234567890123456"


def test_no_identifier_without_a_whole_control_file(tmp_path: Path) -> None:
    assert control_file.system_identifier(tmp_path) is None  # no cluster at all
    (tmp_path / "global").mkdir()
    (tmp_path / "global" / "pg_control").write_bytes(b"\x01\x02\x03")  # truncated
    assert control_file.system_identifier(tmp_path) is None
