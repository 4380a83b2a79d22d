"""infra/dev/services starts the dev services, prints usable settings, and stops them again."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import boto3
import psycopg
import pytest

from tests.support.postgres import _reachable

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "infra" / "dev" / "services.py"


def services(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CUSTODY_DEV_SERVICES_DIR": str(state)}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=120
    )


def exported(output: str) -> dict[str, str]:
    found = {}
    for line in output.splitlines():
        match = re.fullmatch(r"export ([A-Z0-9_]+)=(.*)", line)
        if match:
            found[match.group(1)] = shlex.split(match.group(2))[0]
    return found


@pytest.fixture
def state() -> Iterator[Path]:
    # Under /tmp, not pytest's tmp_path: a private cluster runs as the postgres user when the
    # tests run as root, and pytest's directories are private to their owner.
    path = Path(tempfile.mkdtemp(prefix="custody-dev-services-"))
    try:
        yield path
    finally:
        services(path, "stop")  # whatever the test left running
        subprocess.run(["rm", "-rf", str(path)], check=False)


def test_start_status_env_stop_with_a_private_cluster(state: Path) -> None:
    started = services(state, "start", "--private-pg")
    assert started.returncode == 0, started.stderr
    env = exported(started.stdout)
    assert set(env) >= {"CUSTODY_TEST_PG_URL", "CUSTODY_DATABASE_URL", "CUSTODY_OBJECT_STORE_URL",
                        "CUSTODY_S3_ENDPOINT_URL", "CUSTODY_HMAC_KEYS"}  # fmt: skip
    assert ":5432/" not in env["CUSTODY_TEST_PG_URL"]  # its own cluster, not the machine's
    with psycopg.connect(env["CUSTODY_DATABASE_URL"]) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == ("custody_dev",)
    s3 = boto3.client(
        "s3",
        endpoint_url=env["CUSTODY_S3_ENDPOINT_URL"],
        aws_access_key_id=env["CUSTODY_S3_ACCESS_KEY_ID"],
        aws_secret_access_key=env["CUSTODY_S3_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
    )
    bucket = env["CUSTODY_OBJECT_STORE_URL"].removeprefix("s3://").split("/")[0]
    versioning = s3.get_bucket_versioning(Bucket=bucket)
    assert versioning["Status"] == "Enabled"
    assert oct((state / "dev.env").stat().st_mode & 0o777) == "0o600"

    again = services(state, "start")  # already running: reused, same settings
    assert again.returncode == 0 and exported(again.stdout) == env
    assert services(state, "status").returncode == 0
    assert exported(services(state, "env").stdout) == env

    assert services(state, "stop").returncode == 0
    assert not _reachable(env["CUSTODY_TEST_PG_URL"])
    down = services(state, "status")
    assert down.returncode == 1 and "down" in down.stdout
