"""restore --at a wall-clock TIME without a zone that the configured zone shows twice (the
clocks went back) or skips (they went forward) is refused with the choices, not guessed;
with an offset, or on any other night, it is taken as given. Refused before anything is
read, so no server is needed."""

from __future__ import annotations

from pathlib import Path

import pytest

from laterbased import cli

ZONE = "America/Los_Angeles"  # back on 2026-11-01 at 02:00, forward on 2027-03-14 at 02:00


def _argv(tmp_path: Path, at: str) -> list[str]:
    env_file = tmp_path / ".env"
    env_file.write_text(
        "PRIMARY_HOST=127.0.0.1\n"
        f"PRIMARY_PORT=9\nLATERBASED_TIMEZONE={ZONE}\n"
        f"LOCAL_BACKUP_PATH={tmp_path / 'backups'}\nLATERBASED_STATE_DIR={tmp_path / 'state'}\n"
    )
    return [
        "restore", "--env-file", str(env_file), "--database", "Resolve Library",
        "--at", at, "--target-db", "x",
    ]


def test_a_time_the_clocks_show_twice_is_refused_with_both_offsets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(_argv(tmp_path, "2026-11-01T01:30:00")) == 1
    said = capsys.readouterr().err
    assert f"--at 2026-11-01T01:30:00 happens twice in {ZONE} (the clocks went back)" in said
    assert "--at 2026-11-01T01:30:00-07:00 (the first) or --at 2026-11-01T01:30:00-08:00" \
        " (the second)" in said, said


def test_a_time_the_clocks_skip_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(_argv(tmp_path, "2027-03-14T02:30:00")) == 1
    said = capsys.readouterr().err
    assert f"--at 2027-03-14T02:30:00 does not exist in {ZONE} (the clocks went forward)" \
        in said, said


@pytest.mark.parametrize("at", ["2026-11-01T01:30:00-08:00", "2026-11-02T01:30:00"])
def test_an_offset_or_an_ordinary_night_goes_on_to_the_restore(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], at: str
) -> None:
    # No server at port 9: getting that far means the TIME was accepted.
    cli.main(_argv(tmp_path, at))
    said = capsys.readouterr().err
    assert "happens twice" not in said and "does not exist" not in said, said
    assert "port=9" in said, said
