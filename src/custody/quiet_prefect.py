"""Environment defaults that keep Prefect quiet and offline; set before Prefect is imported."""

from __future__ import annotations

import os

PREFECT_DEFAULTS = {
    # No network beyond the registries here: telemetry only logs errors (FACTS.md).
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    # The ephemeral server needs more than the default 20 s to start on two cores.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
}


def apply_prefect_defaults() -> None:
    """Set the defaults without overriding anything the user set."""
    for name, value in PREFECT_DEFAULTS.items():
        os.environ.setdefault(name, value)
