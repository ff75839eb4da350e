"""WAL positions and how far behind the standby is, as pure functions.

PostgreSQL prints a WAL position (LSN) as two hex numbers ``X/Y``: the high and low 32 bits
of a byte offset into the WAL stream. Differences of LSNs are bytes of WAL.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


def parse_lsn(text: str) -> int:
    """``"0/3000060"`` → 50331744. Raises ValueError on anything else."""
    high, sep, low = text.strip().partition("/")
    if not sep or not high or not low:
        raise ValueError(f"not a WAL position: {text!r}")
    return (int(high, 16) << 32) | int(low, 16)


def format_lsn(position: int) -> str:
    """50331744 → ``"0/3000060"``, the way PostgreSQL prints it."""
    return f"{position >> 32:X}/{position & 0xFFFFFFFF:X}"


@dataclass
class LagClock:
    """Turns WAL positions into a replication delay in seconds.

    The classic ``now() - pg_last_xact_replay_timestamp()`` grows forever on an idle primary
    (no new commits means an old timestamp, not a late standby), and jumps to hours the moment
    one write ends a long idle spell. Instead we remember, at each poll, where the primary's
    WAL was (``observe``). The standby's delay is then "how long ago was the primary where the
    standby is now": zero when the standby has replayed everything the primary has written,
    otherwise ``now`` minus the first poll at which the primary was seen beyond the standby's
    replay position. It is measured in whole poll intervals (it reads 0 until the standby is
    still behind at the next poll) and never grows while the primary is idle.

    When our history does not reach back far enough (the standby was already behind when the
    daemon started), the answer is a lower bound that grows in real time from our first poll.
    """

    max_samples: int = 4096
    samples: deque[tuple[float, int]] = field(default_factory=deque)

    def observe(self, now: float, primary_lsn: int) -> None:
        """Record where the primary's WAL was at ``now`` (unix time)."""
        if self.samples and primary_lsn < self.samples[-1][1]:
            # A new timeline or a different primary: old positions mean nothing now.
            self.samples.clear()
        self.samples.append((now, primary_lsn))
        while len(self.samples) > self.max_samples:
            self.samples.popleft()

    def lag_seconds(self, now: float, replay_lsn: int) -> float | None:
        """Seconds the standby's replay position is behind the primary, or None if unknown."""
        if not self.samples:
            return None
        _, newest = self.samples[-1]
        if replay_lsn >= newest:
            return 0.0
        first_beyond = now
        for at, position in reversed(self.samples):
            if position <= replay_lsn:
                break
            first_beyond = at
        self._forget_before(replay_lsn)
        return max(0.0, now - first_beyond)

    def _forget_before(self, replay_lsn: int) -> None:
        # Samples older than the newest one at or before the replay position are never
        # needed again: the standby only moves forward.
        while len(self.samples) >= 2 and self.samples[1][1] <= replay_lsn:
            self.samples.popleft()
