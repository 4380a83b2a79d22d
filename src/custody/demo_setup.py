"""The embedded setup behind ``custody demo``: everything under one work directory.

Nothing has to be configured by hand: the store and both demo databases are SQLite files, the
object store is a directory, and an HMAC key is generated once and kept in ``demo.env`` (mode
0600) so that later runs verify the events of earlier ones.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from custody.settings import reset_settings_cache

DEMO_CONNECTIONS = ("demo_ehr", "demo_warehouse")


def prepare_demo_environment(work_dir: Path) -> dict[str, str]:
    """Create the work directory and export the demo's settings into this process.

    Variables the user already set are left alone.

    Returns:
        Where things live, for the closing summary (paths only, no secrets).
    """
    work_dir = work_dir.resolve()
    (work_dir / "objects").mkdir(parents=True, exist_ok=True)
    env_file = work_dir / "demo.env"
    if not env_file.exists():
        key_id = "demo-k1"
        env_file.write_text(
            f'CUSTODY_HMAC_KEYS={{"{key_id}": "{secrets.token_hex(32)}"}}\n'
            f"CUSTODY_HMAC_ACTIVE_KEY_ID={key_id}\n"
        )
        env_file.chmod(0o600)
    for line in env_file.read_text().splitlines():
        name, _, value = line.partition("=")
        if name and not line.startswith("#"):
            os.environ.setdefault(name.strip(), value.strip())
    os.environ.setdefault("CUSTODY_WORK_DIR", str(work_dir))
    for name in DEMO_CONNECTIONS:
        os.environ.setdefault(
            f"CUSTODY_CONNECTIONS__{name.upper()}", f"sqlite:///{work_dir / (name + '.db')}"
        )
    reset_settings_cache()
    return {
        "work_dir": str(work_dir),
        "store": str(work_dir / "custody.db"),
        "objects": str(work_dir / "objects"),
        "source": str(work_dir / "demo_ehr.db"),
        "target": str(work_dir / "demo_warehouse.db"),
    }
