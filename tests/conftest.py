"""Session-wide real services: PostgreSQL, SeaweedFS (S3) and a Prefect test server.

Each is started once per session, lazily (only when a test asks for it), and torn down after.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

# Before anything imports Prefect: keep it offline, quiet, and out of the user's ~/.prefect.
_SESSION_HOME = Path(tempfile.mkdtemp(prefix="custody-tests-"))
os.environ["PREFECT_HOME"] = str(_SESSION_HOME / "prefect")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "WARNING")
_FOR_TESTS = "CUSTODY_TEST_"  # e.g. CUSTODY_TEST_PG_URL: which server the tests use
for _name in [n for n in os.environ if n.startswith("CUSTODY_") and not n.startswith(_FOR_TESTS)]:
    del os.environ[_name]  # a developer's own settings must not leak into tests

import pytest  # noqa: E402
from sqlalchemy import Engine  # noqa: E402

from custody.audit import Keyring  # noqa: E402
from custody.db import dispose_engines, get_engine  # noqa: E402
from custody.settings import reset_settings_cache  # noqa: E402
from custody.store import upgrade  # noqa: E402
from tests.support.env import TEST_KEYS  # noqa: E402
from tests.support.mariadb import MariaDBFactory  # noqa: E402
from tests.support.postgres import DatabaseFactory, postgres_server  # noqa: E402
from tests.support.seaweed import S3Server, seaweed_server  # noqa: E402


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    """Admin URL of a PostgreSQL server (the machine's, or a private cluster)."""
    try:
        with postgres_server() as url:
            yield url
    except RuntimeError as exc:
        pytest.exit(str(exc), returncode=3)


@pytest.fixture(scope="session")
def pg_databases(pg_admin_url: str) -> Iterator[DatabaseFactory]:
    """Makes fresh databases; all are dropped at the end of the session."""
    factory = DatabaseFactory(pg_admin_url)
    yield factory
    dispose_engines()
    factory.drop_all()


@pytest.fixture
def pg_url(pg_databases: DatabaseFactory) -> str:
    """A fresh, empty PostgreSQL database for one test."""
    return pg_databases.create()


@pytest.fixture(scope="session")
def mysql_databases() -> Iterator[MariaDBFactory]:
    """Makes fresh MariaDB databases; all are dropped at the end of the session.

    No server: the session stops at once saying what to install (never a silent skip).
    """
    from tests.support.mariadb import DEFAULT_URL, INSTALL_HINT, reachable

    url = os.environ.get("CUSTODY_TEST_MYSQL_URL", DEFAULT_URL)
    if not reachable(url):
        pytest.exit(INSTALL_HINT, returncode=3)
    factory = MariaDBFactory(url)
    yield factory
    dispose_engines()
    factory.drop_all()


@pytest.fixture
def pg_store(pg_databases: DatabaseFactory) -> Engine:
    """custody's store, migrated, in a fresh PostgreSQL database."""
    engine = get_engine(pg_databases.create("store"))
    upgrade(engine)
    return engine


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Engine:
    """custody's store, migrated, in a fresh SQLite file."""
    engine = get_engine(f"sqlite:///{tmp_path / 'custody.db'}")
    upgrade(engine)
    return engine


@pytest.fixture(params=["postgresql", "sqlite"])
def store(request: pytest.FixtureRequest) -> Engine:
    """custody's store on each supported engine in turn."""
    name = "pg_store" if request.param == "postgresql" else "sqlite_store"
    return request.getfixturevalue(name)  # type: ignore[no-any-return]


@pytest.fixture
def keyring() -> Keyring:
    """Signing keys for tests (k1 active)."""
    return Keyring("k1", {k: v.encode() for k, v in TEST_KEYS.items()})


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """A SeaweedFS S3 server on loopback for the whole session."""
    with seaweed_server() as server:
        yield server


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[str]:
    """One Prefect test server for the session; returns its API URL."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield str(PREFECT_API_URL.value())


@pytest.fixture(autouse=True)
def _close_pools() -> Iterator[None]:
    """Each test makes its own databases: close their pooled connections when it ends."""
    yield
    dispose_engines()


@pytest.fixture(autouse=True)
def _fresh_settings() -> Iterator[None]:
    """Settings and task runtime are cached per process: start and end every test clean."""
    from tasks.runtime import reset_runtime

    reset_settings_cache()
    reset_runtime()
    yield
    reset_settings_cache()
    reset_runtime()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the long scenario tests first.

    Under xdist (``infra/dev/test`` runs two workers) the longest jobs go out first, so both
    workers finish at about the same time, instead of one idling through another's late long test.
    """
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
