#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment at .venv with pinned versions.
# Idempotent: does nothing when pyproject.toml and the constraints have not changed since the last run.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
venv="${CUSTODY_VENV:-$root/.venv}"
python="${PYTHON:-python3}"

if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "custody needs Python >= 3.11 ('$python' is $("$python" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
  exit 2
fi

stamp="$venv/.custody-stamp"
want="$(cat "$root/pyproject.toml" "$root/infra/dev/constraints.txt" | sha256sum | cut -d' ' -f1)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -x "$venv/bin/custody" ]]; then
  exit 0
fi

# The MySQL/MariaDB driver (extra "mysql", part of dev) is built against MariaDB Connector/C.
if ! command -v mariadb_config >/dev/null 2>&1; then
  if [[ "$(id -u)" -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo "==> installing libmariadb-dev (headers for the MariaDB driver)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends libmariadb-dev >&2 \
      || { apt-get update >&2 && apt-get install -y --no-install-recommends libmariadb-dev >&2; }
  else
    echo "custody's MySQL/MariaDB driver needs MariaDB Connector/C headers: run" \
      "'sudo apt-get install libmariadb-dev' (Debian) and try again" >&2
    exit 2
  fi
fi

echo "==> setting up $venv (pinned dependencies; 10-60 s with a warm uv cache, longer on a cold one)" >&2
[[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip uv >&2
# uv resolves and installs the pinned set several times faster than pip.
VIRTUAL_ENV="$venv" "$venv/bin/uv" pip install --quiet \
  -c "$root/infra/dev/constraints.txt" -e "$root[dev]" >&2
echo "$want" > "$stamp"
