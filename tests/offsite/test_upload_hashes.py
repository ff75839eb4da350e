"""rclone is asked only for the hashes the remote has, the best of them verifies the copy,
and the manifest says which (S3 has md5 alone: asking sha256 and sha1 too logged two
"hash type not supported" WARNINGs per upload)."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from backup_files import publish_real_backup
from backup_support import make_config
from pgserver import PgServer, free_port
from rclone_servers import S3Server

from laterbased.config import Config, load_config
from laterbased.core.state import State
from laterbased.offsite.upload import upload_pending
from laterbased.records.catalogue import Catalogue, manifest_name

pytestmark = pytest.mark.slow
FAST = {
    "PRIMARY_HOST": "resolve.local",
    "HOME": "/nonexistent-home",
    "LATERBASED_UPLOAD_RETRIES": "1",
    "LATERBASED_UPLOAD_RETRY_BACKOFF": "0.05",
}


@pytest.fixture
def work() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="laterbased-hashes-test-"))
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def with_upload(primary: PgServer, backups: Path, env: dict[str, str]) -> Config:
    config = make_config(primary, backups)
    return dataclasses.replace(config, upload=load_config(None, FAST | env).upload)


@pytest.fixture(scope="module")
def library(primary: PgServer) -> str:
    name = "hashes proj"
    primary.create_database(name)
    primary.sql('CREATE TABLE "SM_Project" (id int)', name)
    return name


async def test_s3_upload_asks_only_for_md5_verifies_with_it_and_says_so_in_the_manifest(
    primary: PgServer, library: str, work: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server = S3Server(work / "s3root", free_port())
    server.start()
    try:
        catalogue = Catalogue(work / "backups")
        record = publish_real_backup(primary, catalogue, library)
        config = with_upload(primary, work / "backups", server.remote_env())
        result = await upload_pending(config, State(config=config), catalogue, "s3-run")
        # Asked again (the mark lost): recognised by md5, without warnings either.
        catalogue.rewrite_manifest(record)
        again = await upload_pending(config, State(config=config), catalogue, "s3-again")
    finally:
        server.stop()
    assert result.result == "success", result.detail
    assert again.already_there == [record.file], again.to_json()
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not [w for w in warnings if "hash" in w.lower()], warnings
    (marked,) = Catalogue(work / "backups").list_backups(library)
    assert marked.uploaded_verified == "size+md5"
    stored = server.root / server.bucket / "laterbased" / record.directory.name
    remote_manifest = json.loads((stored / manifest_name(record.file)).read_text())
    assert remote_manifest["uploaded_verified"] == "size+md5"


async def test_a_remote_with_sha256_verifies_with_sha256(
    primary: PgServer, library: str, work: Path
) -> None:
    catalogue = Catalogue(work / "backups")
    publish_real_backup(primary, catalogue, library)
    env = {
        "RCLONE_REMOTE_NAME": "offsite",
        "RCLONE_REMOTE_PATH": str(work / "offsite"),
        "RCLONE_REMOTE_1_NAME": "offsite",
        "RCLONE_REMOTE_1_TYPE": "local",
    }
    config = with_upload(primary, work / "backups", env)
    result = await upload_pending(config, State(config=config), catalogue, "local-run")
    assert result.result == "success", result.detail
    (marked,) = catalogue.list_backups(library)
    assert marked.uploaded_verified == "size+sha256"
