"""Copy one file off-site and prove it arrived: the remote is asked first (same size, and
the same hash when its backend has one we can compare: the best of sha256 / md5 / sha1), the
file sent with ``rclone copyto`` only when it lacks it, and the copy checked the same way
after. Shared by the dumps' upload and the point-in-time archive's."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

from laterbased.offsite.rclone import VERIFY_HASHES, Rclone, RcloneFailed, RemoteEntry

# Hashes we can compute locally, in order of preference (sha256 is already in the manifest).
LOCAL_HASHES = VERIFY_HASHES


def _digest(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


async def file_matches(
    path: Path, size: int, entry: RemoteEntry | None, sha256: str | None = None
) -> tuple[bool, str]:
    """Does the remote object hold the local file ``path``? (same size, same hash when
    comparable; ``sha256``: already known, not computed again)"""
    if entry is None:
        return False, "absent"
    if entry.size != size:
        return False, f"size {entry.size} != {size}"
    for algorithm in LOCAL_HASHES:
        remote_hash = entry.hashes.get(algorithm)
        if not remote_hash:
            continue
        if algorithm == "sha256" and sha256 is not None:
            local_hash = sha256
        else:
            local_hash = await asyncio.to_thread(_digest, path, algorithm)
        if remote_hash.lower() != local_hash.lower():
            return False, f"{algorithm} differs"
        return True, f"size+{algorithm}"
    return True, "size only (the backend reports no hash we can compare)"


async def send_verified(
    rclone: Rclone, path: Path, size: int, target: str, sha256: str | None = None
) -> tuple[bool, str]:
    """Copy ``path`` to ``target`` (a full ``remote:path``) unless the remote already holds
    it, then check the copy. Returns (sent, how it was verified); raises RcloneFailed when
    the copy off-site does not match."""
    already, how = await file_matches(path, size, await rclone.stat(target), sha256)
    if already:
        return False, how
    await rclone.copyto(path, target)
    ok, how = await file_matches(path, size, await rclone.stat(target), sha256)
    if not ok:
        raise RcloneFailed(f"{target}: verification after upload failed: {how}", None)
    return True, how
