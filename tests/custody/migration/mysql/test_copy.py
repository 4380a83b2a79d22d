"""One MySQL key range copied and verified; bad text named by column and key, never quoted."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine

from custody.chunks import Chunk
from custody.db import get_engine
from custody.migration.mysql.casts import CastRules
from custody.migration.mysql.copy import InvalidSourceTextError, MySQLRangeCopy
from custody.migration.mysql.source import create_target_tables, describe_mysql_tables
from tests.support.env import set_custody_env
from tests.support.mariadb import MariaDBFactory, connect


def test_a_nul_in_text_fails_the_chunk_naming_column_and_key_not_the_value(
    pg_store: Engine,
    pg_databases,  # type: ignore[no-untyped-def]
    mysql_databases: MariaDBFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    src, dst = mysql_databases.create("nul"), pg_databases.create("nul")
    with connect(src) as conn:
        cur = conn.cursor()
        cur.execute("CREATE TABLE notes (id int PRIMARY KEY, body varchar(40))")
        cur.execute("INSERT INTO notes VALUES (1, 'fine'), (2, CONCAT('secret', CHAR(0), 'x'))")
    set_custody_env(
        monkeypatch,
        store_url=pg_store.url.render_as_string(hide_password=False),
        connections={"src": src, "dst": dst},
    )
    [info] = describe_mysql_tables(get_engine(src), "public", ["notes"], CastRules())
    create_target_tables(get_engine(dst), "public", [info], True)
    assert info.plan is not None
    work = MySQLRangeCopy("src", "dst", info.plan)
    with pytest.raises(InvalidSourceTextError) as caught:
        work(Chunk(job_id="j", chunk_no=0, lower=None, upper=2, attempt=1))
    message = str(caught.value)
    assert "'notes'" in message and "'body'" in message and "key 2" in message
    assert "secret" not in message
    ok = work(Chunk(job_id="j", chunk_no=0, lower=None, upper=1, attempt=1))
    assert ok.verified and ok.target_count == 1
