"""The tamper-evident audit trail: hash-chained, HMAC-signed, append-only.

Applications and pipelines append events with :class:`AuditLog`; ``custody audit verify`` (or
:func:`verify_chain`) proves nothing was altered, inserted or removed since.
"""

from custody.audit.buffered import AuditQueueFullError, BufferedAuditWriter
from custody.audit.chain import Keyring
from custody.audit.events import AuditEvent, AuditStatus, DataClassification, Severity
from custody.audit.log import AppendResult, AuditLog
from custody.audit.verify import VerifyResult, verify_chain

__all__ = [
    "AppendResult",
    "AuditEvent",
    "AuditLog",
    "AuditQueueFullError",
    "AuditStatus",
    "BufferedAuditWriter",
    "DataClassification",
    "Keyring",
    "Severity",
    "VerifyResult",
    "verify_chain",
]
