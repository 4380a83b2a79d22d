#!/bin/sh
# One-shot setup of a fresh stack; idempotent, so it runs on every `docker compose up`.
# Runs as custody's store OWNER (CUSTODY_DATABASE_URL): the worker itself connects as
# custody_ingest, which may not change the schema.
set -eu
echo "==> custody store: migrate, grant the ingest and reporting roles, audit partitions"
custody db upgrade
custody db roles
custody audit partitions --months 3
echo "==> object store: versioned bucket with Object Lock"
python - <<'PY'
from urllib.parse import urlparse

from custody.settings import get_settings
from custody.storage.factory import s3_client
from custody.storage.s3 import ensure_bucket

settings = get_settings()
bucket = urlparse(settings.resolved_object_store_url()).netloc
ensure_bucket(s3_client(settings), bucket, object_lock=True)
print(f"bucket {bucket} ready")
PY
echo "==> Prefect: work pool, queues, limits; then every deployment in prefect.yaml"
cd /app
python infra/prefect/setup_server.py --schedules "${CUSTODY_SCHEDULES:-off}"
prefect --no-prompt deploy --all
