"""What time it is, and how far to trust a timestamp from the future.

A clock that ran fast (a bad NTP step, a VM resumed from a snapshot) leaves backups and run
results dated after "now". Such a date never counts as the newest or the freshest: health,
retention, restore and upload all ask :func:`is_future` with the same tolerance.
"""

from __future__ import annotations

from datetime import datetime, timedelta

# Clock steps smaller than this are ordinary jitter between hosts and processes.
FUTURE_TOLERANCE = timedelta(minutes=5)


def is_future(moment: datetime, now: datetime) -> bool:
    """Whether ``moment`` lies after ``now`` by more than :data:`FUTURE_TOLERANCE`."""
    return moment > now + FUTURE_TOLERANCE
