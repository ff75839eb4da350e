"""The point-in-time archive on disk: WAL segments and base backups, and the window they cover.

Layout under the backup directory::

    <root>/@wal/<24 hex>.gz               a complete WAL segment (pg_receivewal --compress)
    <root>/@wal/<24 hex>.gz.partial       the segment being received: the last seconds
    <root>/@wal/<8 hex>.history           timeline history files
    <root>/@base/<UTC stamp>/base.tar.gz  pg_basebackup -Ft -z -X none (WAL comes from @wal)
    <root>/@base/<UTC stamp>/backup_manifest
    <root>/@base/<UTC stamp>/manifest.json  ours: LSNs, times, timeline, server, identity
    <root>/@base/.partial-<stamp>/        a base backup in progress (removed at start)

``@`` and not ``.``: the catalogue percent-encodes ``@`` in database folder names (``%40``),
so no database's folder can ever be called ``@wal``, as with ``@globals``; and a folder an
operator sees with ``ls`` (a dot folder is hidden, like the throw-away ``.partial``) is one
they will not forget when they copy the backups by hand.
A base backup exists once its folder is renamed from ``.partial-<stamp>``: the rename is the
publication. Everything here is blocking file I/O: call it through ``asyncio.to_thread``.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

WAL_DIR = "@wal"
BASE_DIR = "@base"
PITR_DIRS = frozenset({WAL_DIR, BASE_DIR})
BASE_PARTIAL_PREFIX = ".partial-"
BASE_MANIFEST = "manifest.json"
BASE_MANIFEST_KIND = "laterbased-base-backup"
DEFAULT_SEGMENT_SIZE = 16 * 1024 * 1024
# Its mtime: the last moment the archive was seen to hold all the primary had written (the
# slot's restart_lsn at the primary's current position). An idle primary writes no WAL, so
# without it the window would end at the last write, not now.
CAUGHT_UP_MARKER = ".caught-up"
_SEGMENT = re.compile(r"^(?P<name>[0-9A-F]{24})(?P<gz>\.gz)?(?P<partial>\.partial)?$")


def wal_dir(root: Path) -> Path:
    return root / WAL_DIR


def base_dir(root: Path) -> Path:
    return root / BASE_DIR


@dataclass(frozen=True)
class Segment:
    """One WAL segment file of the archive."""

    path: Path
    name: str  # the 24 hex digits PostgreSQL asks restore_command for
    timeline: int
    number: int  # log * segments_per_log + seg: consecutive segments differ by one
    compressed: bool
    partial: bool


def parse_segment(path: Path, segment_size: int = DEFAULT_SEGMENT_SIZE) -> Segment | None:
    match = _SEGMENT.match(path.name)
    if match is None:
        return None
    name = match["name"]
    per_log = 0x100000000 // segment_size
    number = int(name[8:16], 16) * per_log + int(name[16:24], 16)
    return Segment(
        path, name, int(name[:8], 16), number, bool(match["gz"]), bool(match["partial"])
    )


def segment_of_lsn(lsn: str, segment_size: int = DEFAULT_SEGMENT_SIZE) -> int:
    """The segment number holding ``lsn`` ("16/B374D848")."""
    high, low = lsn.split("/")
    return ((int(high, 16) << 32) | int(low, 16)) // segment_size


def list_segments(root: Path, segment_size: int = DEFAULT_SEGMENT_SIZE) -> list[Segment]:
    """Every segment file of the archive, by timeline and number (a partial after its
    complete twin, which pg_receivewal leaves only for a moment)."""
    directory = wal_dir(root)
    if not directory.is_dir():
        return []
    found = []
    for entry in directory.iterdir():
        segment = parse_segment(entry, segment_size)
        if segment is not None:
            found.append(segment)
    found.sort(key=lambda s: (s.timeline, s.number, s.partial))
    return found


def find_segment(root: Path, name: str) -> Segment | None:
    """The file holding segment ``name``: complete first, else the partial one."""
    directory = wal_dir(root)
    for suffix in (".gz", "", ".gz.partial", ".partial"):
        path = directory / f"{name}{suffix}"
        if path.is_file():
            return parse_segment(path)
    return None


@dataclass(frozen=True)
class BaseBackup:
    """A published base backup and what its manifest says."""

    directory: Path
    started: datetime
    finished: datetime  # no later moment of the cluster needs less WAL than from start_lsn
    start_lsn: str
    end_lsn: str
    timeline: int
    server_version: str
    server_version_num: int
    system_identifier: str | None
    segment_size: int
    # The server pg_basebackup read: the local standby while it streams, else the primary.
    source: str = "primary"

    @property
    def tar(self) -> Path:
        return self.directory / "base.tar.gz"

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": BASE_MANIFEST_KIND,
            "version": 1,
            "started": self.started.isoformat(),
            "finished": self.finished.isoformat(),
            "start_lsn": self.start_lsn,
            "end_lsn": self.end_lsn,
            "timeline": self.timeline,
            "server_version": self.server_version,
            "server_version_num": self.server_version_num,
            "system_identifier": self.system_identifier,
            "wal_segment_size": self.segment_size,
            "source": self.source,
            "files": sorted(p.name for p in self.directory.iterdir() if p.name != BASE_MANIFEST)
            if self.directory.is_dir()
            else [],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], directory: Path) -> BaseBackup:
        if data.get("kind") != BASE_MANIFEST_KIND:
            raise ValueError("not a base backup manifest")
        return cls(
            directory=directory,
            started=datetime.fromisoformat(str(data["started"])),
            finished=datetime.fromisoformat(str(data["finished"])),
            start_lsn=str(data["start_lsn"]),
            end_lsn=str(data["end_lsn"]),
            timeline=int(data["timeline"]),
            server_version=str(data["server_version"]),
            server_version_num=int(data["server_version_num"]),
            system_identifier=(
                None if data.get("system_identifier") is None else str(data["system_identifier"])
            ),
            segment_size=int(data.get("wal_segment_size", DEFAULT_SEGMENT_SIZE)),
            source=str(data.get("source") or "primary"),
        )


def list_base_backups(root: Path) -> list[BaseBackup]:
    """Every published base backup with a readable manifest, oldest first."""
    directory = base_dir(root)
    if not directory.is_dir():
        return []
    found = []
    for entry in sorted(directory.iterdir()):
        if entry.name.startswith(".") or not entry.is_dir() or entry.is_symlink():
            continue
        try:
            data = json.loads((entry / BASE_MANIFEST).read_text("utf-8"))
            found.append(BaseBackup.from_json(data, entry))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logger.debug("not a base backup %s: %s", entry, exc)
    found.sort(key=lambda b: b.finished)
    return found


def new_base_partial(root: Path, stamp: str) -> Path:
    """A new, empty ``@base/.partial-<name>/``; ``<name>`` is ``stamp``, or ``stamp-2``, ``-3``
    … when a base backup of that second exists or is being written (a retry, or a fallback
    from the standby to the primary, within the same second). :func:`base_name` is the
    name it will be published under."""
    directory = base_dir(root)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    for number in range(1, 1000):
        name = stamp if number == 1 else f"{stamp}-{number}"
        if (directory / name).exists():
            continue
        partial = directory / f"{BASE_PARTIAL_PREFIX}{name}"
        try:
            partial.mkdir(mode=0o700)
        except FileExistsError:
            continue
        return partial
    raise FileExistsError(f"no free base backup name for {stamp} in {directory}")


def base_name(partial: Path) -> str:
    """The name a base backup staged in ``partial`` is published under."""
    return partial.name.removeprefix(BASE_PARTIAL_PREFIX)


def publish_base_backup(partial: Path, backup: BaseBackup) -> BaseBackup:
    """Write the manifest into ``partial`` (fsynced with every file), then rename the folder
    to its final name and fsync the parent: a base backup is there whole or not at all."""
    final = backup.directory
    if final.exists():
        raise FileExistsError(f"base backup {final} already exists")
    staged = BaseBackup(**{**backup.__dict__, "directory": partial})
    manifest = staged.to_json()
    (partial / BASE_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", "utf-8")
    for entry in partial.iterdir():
        fd = os.open(entry, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            os.fchmod(fd, 0o600)
            os.fsync(fd)
        finally:
            os.close(fd)
    _fsync_dir(partial)
    os.rename(partial, final)
    _fsync_dir(final.parent)
    return backup


def remove_base_partials(root: Path) -> int:
    """Delete base backups an interrupted run left in progress."""
    directory = base_dir(root)
    removed = 0
    if not directory.is_dir():
        return 0
    for entry in directory.iterdir():
        if entry.name.startswith(BASE_PARTIAL_PREFIX) and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
            removed += 1
            logger.warning("removed the unfinished base backup %s", entry)
    return removed


def mark_caught_up(root: Path, moment: float) -> None:
    """Record that at ``moment`` the archive held everything the primary had written."""
    marker = wal_dir(root) / CAUGHT_UP_MARKER
    if not marker.parent.is_dir():
        return
    marker.touch(mode=0o600, exist_ok=True)
    os.utime(marker, (moment, moment))


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- the window ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Range:
    """Moments restorable from one unbroken run of segments: from the end of the oldest base
    backup inside the run to the last WAL received in it."""

    earliest: datetime
    latest: datetime
    first_segment: int
    last_segment: int


@dataclass(frozen=True)
class Coverage:
    """What the archive can restore now: every moment from ``earliest`` to ``latest`` (the
    newest unbroken run), and every earlier range cut off by a missing segment."""

    earliest: datetime | None
    latest: datetime | None
    last_segment: str | None
    # Missing segments: (first missing, last missing) names.
    gaps: tuple[tuple[str, str], ...] = ()
    gap_since: datetime | None = None  # when the newest gap began (the file before it)
    ranges: tuple[Range, ...] = ()
    # The end of the oldest base backup kept: from there on the archive is meant to reach
    # every moment, whether or not missing WAL left that base backup any range.
    began: datetime | None = None

    def covers(self, moment: datetime) -> bool:
        return self.range_of(moment) is not None

    def range_of(self, moment: datetime) -> Range | None:
        for candidate in self.ranges:
            if candidate.earliest <= moment <= candidate.latest:
                return candidate
        return None

    def out_of_reach(self, moment: datetime) -> bool:
        """``moment`` lies after the first restorable moment, yet no range reaches it: in a
        gap, after a gap before the next base backup, or past the last WAL received. A
        restore there is refused (the ranges are what can be had); a moment before the
        whole window is simply older than the archive. The window began with the oldest
        base backup, usable or not: WAL missing from its own start on leaves it no range,
        and a moment after it is no older than the archive (it must not quietly become an
        older dump)."""
        began = self.began or (self.ranges[0].earliest if self.ranges else None)
        return began is not None and moment >= began and not self.covers(moment)

    def why_out_of_reach(
        self,
        moment: datetime,
        archive: str = "the point-in-time archive",
        end_hint: str = "is pg_receivewal streaming?",
    ) -> str | None:
        """For a human: why ``archive`` cannot give ``moment`` back although its window began
        before it (:meth:`out_of_reach`), with the exact ranges it can; None otherwise."""
        if not self.out_of_reach(moment):
            return None
        stamp = moment.astimezone(UTC).isoformat()
        now = datetime.now(UTC)
        if moment > now:
            # Not a fault of the archive: a typo in the date, or the wrong zone.
            why = (
                f"it is in the future (the clock here says {now.isoformat(timespec='seconds')};"
                " a TIME without a zone is read in the configured timezone)"
            )
        elif self.gaps and (self.latest is None or moment < self.latest):
            since = self.gap_since.astimezone(UTC).isoformat() if self.gap_since else "unknown"
            missing = ", ".join(f"{first} to {last}" for first, last in self.gaps)
            why = (
                f"WAL segments {missing} are missing (broken since {since}; after a gap the "
                "archive restores again only from the next base backup on)"
            )
        elif self.ranges:
            reached = self.ranges[-1].latest.astimezone(UTC).isoformat()
            why = f"the archive has WAL only up to {reached} ({end_hint})"
        else:
            why = "the WAL its base backups start from is missing"
        return (
            f"{stamp} cannot be restored from {archive}: {why}. Restorable exactly: "
            f"{self.describe_ranges() or 'nothing yet (until the next base backup)'}"
        )

    def describe_ranges(self) -> str:
        """Every restorable range, ISO 8601 UTC, for a human."""
        return "; ".join(
            f"{r.earliest.astimezone(UTC).isoformat()} to {r.latest.astimezone(UTC).isoformat()}"
            for r in self.ranges
        )


def segment_name(timeline: int, number: int, segment_size: int = DEFAULT_SEGMENT_SIZE) -> str:
    per_log = 0x100000000 // segment_size
    return f"{timeline:08X}{number // per_log:08X}{number % per_log:08X}"


@dataclass(frozen=True)
class TimelineSpan:
    """The segments one timeline contributes to the newest one's history: from
    ``first_segment`` to ``last_segment``, the one holding its switch to the next timeline
    (None: the newest, still going)."""

    timeline: int
    first_segment: int
    last_segment: int | None

    def holds(self, number: int) -> bool:
        return self.first_segment <= number and (
            self.last_segment is None or number <= self.last_segment
        )


def read_history(root: Path, timeline: int) -> list[tuple[int, str]]:
    """``(parent timeline, switch LSN)`` of every ancestor of ``timeline``, oldest first,
    from its history file in the archive; [] for timeline 1 or when the file is missing."""
    directory = wal_dir(root)
    for name in (f"{timeline:08X}.history", f"{timeline:08X}.history.gz"):
        path = directory / name
        try:
            raw = path.read_bytes()
        except OSError:
            continue
        text = (gzip.decompress(raw) if name.endswith(".gz") else raw).decode("ascii", "replace")
        entries = []
        for line in text.splitlines():
            fields = line.split()
            if len(fields) >= 2 and not line.startswith("#") and "/" in fields[1]:
                with contextlib.suppress(ValueError):
                    entries.append((int(fields[0]), fields[1]))
        return entries
    return []


def timeline_chain(
    root: Path, timeline: int, segment_size: int = DEFAULT_SEGMENT_SIZE
) -> tuple[TimelineSpan, ...]:
    """Which timeline's file holds each segment on the way to ``timeline``: what recovery
    with ``recovery_target_timeline = 'latest'`` reads. A segment holding a switch point
    exists on both sides; the newer timeline's copy is the one recovery takes."""
    spans: list[TimelineSpan] = []
    begin = 0
    for parent, switch in read_history(root, timeline):
        end = segment_of_lsn(switch, segment_size)
        spans.append(TimelineSpan(parent, begin, end))
        begin = end
    spans.append(TimelineSpan(timeline, begin, None))
    return tuple(spans)


def coverage(root: Path) -> Coverage:
    """The restorable ranges: for every unbroken run of segments on the way to the newest
    timeline (its ancestors' up to each switch, read from the history files) that holds a
    base backup's whole WAL range, from the end of its oldest such base backup to the last
    WAL received in the run. ``earliest``/``latest`` are the newest run's (None when no
    base backup follows the newest hole)."""
    backups = list_base_backups(root)
    segment_size = backups[-1].segment_size if backups else DEFAULT_SEGMENT_SIZE
    segments = list_segments(root, segment_size)
    if not segments:
        return Coverage(None, None, None)
    newest = segments[-1]
    chain = timeline_chain(root, newest.timeline, segment_size)

    def owner(number: int) -> int:
        """The timeline whose name a segment has on the way (the newest that holds it)."""
        return next(
            (span.timeline for span in reversed(chain) if span.holds(number)), newest.timeline
        )

    received: dict[int, float] = {}
    for segment in segments:
        if any(s.timeline == segment.timeline and s.holds(segment.number) for s in chain):
            with contextlib.suppress(OSError):
                mtime = segment.path.stat().st_mtime
                received[segment.number] = max(received.get(segment.number, 0.0), mtime)
    numbers = sorted(received)
    if not numbers:
        return Coverage(None, None, newest.path.name)
    gaps: list[tuple[str, str]] = []
    gap_since: datetime | None = None
    runs: list[tuple[int, int]] = []
    run_start = numbers[0]
    for before, after in zip(numbers, numbers[1:], strict=False):
        if after != before + 1:
            gaps.append(
                (
                    segment_name(owner(before + 1), before + 1, segment_size),
                    segment_name(owner(after - 1), after - 1, segment_size),
                )
            )
            runs.append((run_start, before))
            run_start = after
            gap_since = datetime.fromtimestamp(received[before], UTC)
    runs.append((run_start, numbers[-1]))
    ranges: list[Range] = []
    newest_range: Range | None = None
    for first, last in runs:
        inside = [
            b
            for b in backups
            if any(
                s.timeline == b.timeline and s.holds(segment_of_lsn(b.start_lsn, segment_size))
                for s in chain
            )
            and segment_of_lsn(b.start_lsn, segment_size) >= first
            and segment_of_lsn(b.end_lsn, segment_size) <= last
        ]
        if not inside:
            continue
        begin = inside[0].finished
        end = max(datetime.fromtimestamp(received[last], UTC), begin)
        if last == numbers[-1]:
            with contextlib.suppress(OSError):
                caught_up = (wal_dir(root) / CAUGHT_UP_MARKER).stat().st_mtime
                if caught_up >= received[last]:
                    end = max(end, datetime.fromtimestamp(caught_up, UTC))
        ranges.append(Range(begin, end, first, last))
        if last == numbers[-1]:
            newest_range = ranges[-1]
    return Coverage(
        newest_range.earliest if newest_range else None,
        newest_range.latest if newest_range else None,
        newest.path.name,
        tuple(gaps),
        gap_since,
        tuple(ranges),
        min(b.finished for b in backups) if backups else None,
    )


def base_backup_for(root: Path, moment: datetime) -> BaseBackup | None:
    """The newest base backup finished at or before ``moment`` inside the unbroken run of
    segments that reaches ``moment``; None when no range covers it."""
    window = coverage(root)
    found = window.range_of(moment)
    if found is None:
        return None
    backups = list_base_backups(root)
    candidates = [
        b
        for b in backups
        if b.finished <= moment
        and segment_of_lsn(b.start_lsn, b.segment_size) >= found.first_segment
        and segment_of_lsn(b.end_lsn, b.segment_size) <= found.last_segment
    ]
    return candidates[-1] if candidates else None


@dataclass(frozen=True)
class Pruned:
    base_backups: tuple[str, ...]
    segments: int


def prune(root: Path, window_start: datetime, *, keep_not_uploaded: bool = False) -> Pruned:
    """Delete what no moment of the window needs: base backups older than the newest one
    finished before ``window_start`` (it is the one that reaches the window's first moment;
    the newest base backup is never deleted), then every segment before the oldest kept base
    backup's start. History files and the partial segment stay. ``keep_not_uploaded`` (the
    upload is on): what has no off-site copy yet stays too, until the upload job has sent it
    (a remote that is down must not cost the only copy)."""
    backups = list_base_backups(root)
    if not backups:
        return Pruned((), 0)
    before = [b for b in backups if b.finished <= window_start]
    keep_from = before[-1] if before else backups[0]
    doomed = [b for b in backups if b.finished < keep_from.finished and b is not backups[-1]]
    held = 0
    if keep_not_uploaded:
        waiting = [b for b in doomed if not is_uploaded(b.directory)]
        held += len(waiting)
        doomed = [b for b in doomed if b not in waiting]
    for backup in doomed:
        # Its manifest first: a half-deleted base backup is no longer listed.
        (backup.directory / BASE_MANIFEST).unlink(missing_ok=True)
        shutil.rmtree(backup.directory, ignore_errors=True)
        upload_marker(backup.directory).unlink(missing_ok=True)
        logger.info("pitr retention: deleted base backup %s", backup.directory.name)
    first_needed = segment_of_lsn(keep_from.start_lsn, keep_from.segment_size)
    removed = 0
    for segment in list_segments(root, keep_from.segment_size):
        if segment.partial:
            continue
        older = segment.timeline < keep_from.timeline or (
            segment.timeline == keep_from.timeline and segment.number < first_needed
        )
        if older and keep_not_uploaded and not is_uploaded(segment.path):
            held += 1
        elif older:
            segment.path.unlink(missing_ok=True)
            upload_marker(segment.path).unlink(missing_ok=True)
            removed += 1
    if held:
        logger.info(
            "pitr retention: kept %s base backup(s)/WAL segment(s) the window no longer needs "
            "until they are uploaded",
            held,
        )
    if doomed or removed:
        _fsync_dir(base_dir(root))
        if wal_dir(root).is_dir():
            _fsync_dir(wal_dir(root))
        logger.info(
            "pitr retention: window from %s; deleted %s base backup(s), %s WAL segment(s)",
            window_start.isoformat(),
            len(doomed),
            removed,
        )
    return Pruned(tuple(b.directory.name for b in doomed), removed)


# --- what has an off-site copy --------------------------------------------------------------
#
# The upload job (offsite/) records each finished archive file and each base backup it has
# sent, verified, as a marker named after it in a ``.uploaded`` folder beside it
# (``@wal/.uploaded/<segment file>``, ``@base/.uploaded/<stamp>``): one small file per piece,
# created whole (rename), so no list is ever rewritten while retention reads it. The
# marker holds where, when and how the copy was verified, for an operator.

UPLOADED_DIR = ".uploaded"
_HISTORY = re.compile(r"^[0-9A-F]{8}\.history(?:\.gz)?$")


def upload_marker(piece: Path) -> Path:
    """The marker recording that ``piece`` (an ``@wal`` file, an ``@base/<stamp>`` folder)
    has an off-site copy."""
    return piece.parent / UPLOADED_DIR / piece.name


def is_uploaded(piece: Path) -> bool:
    return upload_marker(piece).is_file()


def mark_uploaded(piece: Path, destination: str, verified: str, at: datetime) -> None:
    """Record that ``piece`` is off-site at ``destination`` (written whole, then renamed)."""
    marker = upload_marker(piece)
    marker.parent.mkdir(mode=0o700, exist_ok=True)
    temp = marker.with_name(f".{marker.name}.tmp")
    data = {"uploaded_to": destination, "uploaded_at": at.isoformat(), "verified": verified}
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(data) + "\n")
    os.rename(temp, marker)


def is_history_file(name: str) -> bool:
    """A timeline history file as pg_receivewal writes it (``00000002.history[.gz]``)."""
    return _HISTORY.match(name) is not None


def finished_wal_files(root: Path) -> list[Path]:
    """What pg_receivewal has finished in ``@wal``: timeline history files, then complete
    segments oldest first. Never the ``.partial`` segment still being written."""
    directory = wal_dir(root)
    if not directory.is_dir():
        return []
    histories = sorted(p for p in directory.iterdir() if is_history_file(p.name))
    segments = [s.path for s in list_segments(root) if not s.partial]
    return [*histories, *segments]


def not_uploaded(root: Path) -> tuple[list[BaseBackup], list[Path]]:
    """Published base backups and finished WAL files without an off-site copy, oldest
    first."""
    backups = [b for b in list_base_backups(root) if not is_uploaded(b.directory)]
    files = [p for p in finished_wal_files(root) if not is_uploaded(p)]
    return backups, files


def pending_upload(root: Path) -> tuple[int, float | None]:
    """How many pieces wait for their off-site copy, and since when the oldest (epoch)."""
    backups, files = not_uploaded(root)
    since = [b.finished.timestamp() for b in backups]
    for path in files:
        with contextlib.suppress(OSError):
            since.append(path.stat().st_mtime)
    return len(backups) + len(files), (min(since) if since else None)
