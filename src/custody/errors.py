"""Exceptions that carry a message a data engineer can act on."""


class CustodyError(Exception):
    """Base class for errors raised by custody itself (not by a driver or library).

    ``transient`` says the same call may succeed if simply made again (a lost connection, a
    timeout). Tasks retry only those. An error that wraps a driver error, so as not to carry
    its message (PHI) onward, must pass that judgement on, since it cuts the chain
    ``is_transient`` would otherwise follow.
    """

    transient: bool = False  # a subclass may make its default True

    def __init__(self, *args: object, transient: bool | None = None) -> None:
        super().__init__(*args)
        if transient is not None:  # in __dict__, so it survives pickling (Dask, Prefect)
            self.transient = transient


class ConfigError(CustodyError):
    """A setting is missing or malformed; the message names the environment variable."""


class InvalidIdentifierError(CustodyError, ValueError):
    """A table or column name was refused before it could reach SQL."""


class AuditChainError(CustodyError):
    """The audit chain could not be appended to or read consistently."""


class JobPlanMismatchError(CustodyError):
    """A job id was reused with parameters that would change its stored chunk plan."""


def safe_error(exc: BaseException) -> str:
    """Describe an exception without its message, which may quote row values (PHI).

    Database errors keep their SQLSTATE so an engineer can still tell a lost connection from a
    constraint violation; the full message goes only to custody's own store (ledger, dead letters).
    """
    cause: BaseException | None = exc
    code = None
    while cause is not None and code is None:
        sqlstate = getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)
        # PostgreSQL's SQLSTATE, or SQLite's result code name (e.g. SQLITE_CONSTRAINT_CHECK).
        code = f"SQLSTATE {sqlstate}" if sqlstate else getattr(cause, "sqlite_errorname", None)
        cause = cause.__cause__ or getattr(cause, "orig", None)
    name = type(exc).__name__
    return f"{name} ({code})" if code else name
