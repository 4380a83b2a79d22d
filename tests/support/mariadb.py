"""A MariaDB (or MySQL) server for the tests: fresh databases per session, dropped at the end.

Order: ``CUSTODY_TEST_MYSQL_URL`` if set; else the server at 127.0.0.1:3306 (root, no password).
If neither answers, the session fails at once saying what to install. Never a silent skip.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid

from tests.support.pagila import SHARED

DEFAULT_URL = "mariadb://root@127.0.0.1:3306/test"
SAKILA = SHARED / "data" / "mysql" / "sakila"
INSTALL_HINT = (
    "MariaDB is needed for the MySQL migration tests and none answers at 127.0.0.1:3306 "
    "(user root, no password). Install and start it (Debian: apt-get install mariadb-server "
    "libmariadb-dev, then service mariadb start), or point CUSTODY_TEST_MYSQL_URL at a server "
    "where the user may create databases. The driver comes with the dev extra: "
    "infra/dev/bootstrap.sh."
)


def connect(url: str, database: str | None = None):  # type: ignore[no-untyped-def]
    """A raw MariaDB Connector/Python connection (autocommit) to ``url``'s server."""
    try:
        import mariadb
    except ImportError as exc:  # pragma: no cover - the dev extra installs it
        raise RuntimeError(f"the mariadb driver is missing: {INSTALL_HINT}") from exc
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    conn = mariadb.connect(
        host=parsed.host or "127.0.0.1",
        port=parsed.port or 3306,
        user=parsed.username or "root",
        password=parsed.password or "",
        database=database if database is not None else (parsed.database or ""),
        connect_timeout=5,
        autocommit=True,
    )
    return conn


def reachable(url: str) -> bool:
    """Whether the server answers."""
    try:
        connect(url, database="").close()
    except Exception:
        return False
    return True


class MariaDBFactory:
    """Creates fresh MariaDB databases and drops them all at the end of the session."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.created: list[str] = []

    def create(self, label: str = "db") -> str:
        """A new empty database (utf8mb4); returns its URL."""
        name = f"custody_test_{label}_{uuid.uuid4().hex[:10]}"
        with connect(self.admin_url, database="") as conn:
            conn.cursor().execute(
                f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci"
            )
        self.created.append(name)
        return f"{self.admin_url.rsplit('/', 1)[0]}/{name}"

    def drop_all(self) -> None:
        """Drop every database this factory made."""
        with connect(self.admin_url, database="") as conn:
            for name in self.created:
                conn.cursor().execute(f"DROP DATABASE IF EXISTS `{name}`")
        self.created.clear()


def run_sql(url: str, script: bytes) -> None:
    """Run a mysqldump-style script (DELIMITER and all) with the mariadb client."""
    client = shutil.which("mariadb") or shutil.which("mysql")
    assert client, "the mariadb client is needed to load SQL files: apt-get install mariadb-client"
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    done = subprocess.run(
        [client, "-h", parsed.host or "127.0.0.1", "-P", str(parsed.port or 3306),
         "-u", parsed.username or "root", parsed.database or ""],
        input=script, capture_output=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]


def load_sakila(url: str) -> None:
    """Load MySQL's Sakila sample (schema with views, triggers, routines; then data).

    The scripts create and use a database named ``sakila``: they are pointed at ``url``'s fresh
    database instead, so test sessions never share one.
    """
    assert SAKILA.is_dir(), f"Sakila sample data not found at {SAKILA}"
    name = url.rsplit("/", 1)[1].encode()
    for file in ("sakila-schema.sql", "sakila-data.sql"):
        lines = []
        for line in (SAKILA / file).read_bytes().splitlines(keepends=True):
            if line.startswith((b"DROP SCHEMA IF EXISTS sakila;", b"CREATE SCHEMA sakila;")):
                continue
            if line.startswith(b"USE sakila;"):
                line = b"USE `" + name + b"`;\n"
            lines.append(line.replace(b"sakila.", b"`" + name + b"`."))
        run_sql(url, b"".join(lines))
