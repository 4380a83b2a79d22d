"""Stage a lab payload in the object store, so that an API-triggered run passes a reference.

Flow parameters are stored by Prefect, which may run outside the HIPAA boundary: a message
posted as a parameter would put PHI there. Instead the caller stages the payload here (or
uploads it to the store's inbox itself) and triggers ``ingest-lab-results`` with
``source="store:<key>"``. The key is the payload's SHA-256, so staging twice is harmless.
"""

from __future__ import annotations

import hashlib

from custody.labs.ingest import detect_format
from custody.storage import ObjectStore, check_prefix, join_key

_EXTENSION = {"hl7v2": "hl7", "fhir": "json", "csv": "csv"}


def stage_payload(store: ObjectStore, data: bytes, prefix: str = "inbox") -> str:
    """Put the payload under ``prefix/<sha256>.<ext>``; return the flow's ``source`` value."""
    if not data:
        raise ValueError("the payload is empty")
    digest = hashlib.sha256(data).hexdigest()
    key = join_key(check_prefix(prefix), f"{digest}.{_EXTENSION[detect_format(data)]}")
    existing = store.head(key)
    if existing is None or existing.sha256 != digest:
        store.put(key, data)
    return f"store:{key}"
