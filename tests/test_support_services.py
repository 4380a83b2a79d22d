"""The S3 server the tests start behaves like S3 where custody depends on it."""

from __future__ import annotations

import base64
import hashlib

import pytest
from botocore.exceptions import ClientError

from tests.support.seaweed import S3Server


def test_checksums_are_stored_and_bad_ones_refused(s3_server: S3Server) -> None:
    s3 = s3_server.client()
    s3.create_bucket(Bucket="support-check")
    body = b"custody" * 1000
    digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
    s3.put_object(Bucket="support-check", Key="a", Body=body, ChecksumSHA256=digest)
    head = s3.head_object(Bucket="support-check", Key="a", ChecksumMode="ENABLED")
    assert head["ChecksumSHA256"] == digest
    with pytest.raises(ClientError):
        s3.put_object(
            Bucket="support-check",
            Key="b",
            Body=body,
            ChecksumSHA256=base64.b64encode(b"\0" * 32).decode(),
        )


def test_signatures_are_enforced(s3_server: S3Server) -> None:
    import boto3

    forged = boto3.client(
        "s3",
        endpoint_url=s3_server.endpoint_url,
        aws_access_key_id=s3_server.access_key,
        aws_secret_access_key="wrong-secret",
        region_name="us-east-1",
    )
    with pytest.raises(ClientError):
        forged.list_buckets()


def test_mariadb_databases_are_fresh_and_reached_through_custody_engines(
    mysql_databases,  # type: ignore[no-untyped-def]
) -> None:
    from sqlalchemy import text

    from custody.db import get_engine, is_mysql

    url = mysql_databases.create("probe")
    engine = get_engine(url.replace("mariadb://", "mysql://"))
    assert is_mysql(engine) and engine.dialect.driver == "mariadbconnector"
    with engine.connect() as c:
        assert c.execute(text("SELECT DATABASE()")).scalar_one() == url.rsplit("/", 1)[1]
        assert c.execute(text("SHOW TABLES")).all() == []
