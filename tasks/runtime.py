"""What every task needs from its process: settings, custody's store, the audit log, the ledger.

Built once per worker process from ``CUSTODY_*`` settings, never passed through Prefect (it holds
connections and keys).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from functools import lru_cache

from sqlalchemy import Engine, inspect

from custody.audit import AuditLog, Keyring
from custody.chunks import Ledger
from custody.db import get_engine
from custody.errors import ConfigError
from custody.prefect_glue import current_flow_run_id, emit_critical_event
from custody.settings import Settings, get_settings


@dataclass(frozen=True)
class Runtime:
    """Process-wide handles shared by the tasks."""

    settings: Settings
    store: Engine
    audit: AuditLog
    ledger: Ledger

    def engine(self, connection_name: str) -> Engine:
        """Engine of a named connection (resolved from settings or a Prefect Secret block)."""
        return get_engine(self.settings.connection_url(connection_name))

    @property
    def correlation_id(self) -> str | None:
        """The current flow run id: ties audit rows to the Prefect run that wrote them."""
        return current_flow_run_id()


@lru_cache(maxsize=1)
def runtime() -> Runtime:
    """Build the runtime once per process.

    Raises:
        ConfigError: a setting is missing, or the store has not been initialised.
    """
    settings = get_settings()
    store = get_engine(settings.store_url())
    if not inspect(store).has_table("audit_chain_head"):
        raise ConfigError(
            "custody's store is not initialised: run `custody db upgrade` "
            "(it uses CUSTODY_DATABASE_URL)"
        )
    active, keys = settings.require_hmac_keys()
    audit = AuditLog(
        store,
        Keyring(active, keys),
        critical_listeners=[emit_critical_event],
        max_clock_skew=dt.timedelta(seconds=settings.audit_max_clock_skew_seconds),
    )
    return Runtime(settings=settings, store=store, audit=audit, ledger=Ledger(store))


def reset_runtime() -> None:
    """Forget the cached runtime (after settings change)."""
    runtime.cache_clear()
