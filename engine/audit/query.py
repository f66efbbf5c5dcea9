"""Users' SQL over the audit log: plain SQL for users, but nothing else.

Threat model. Users' SQL (`jetdag sql`, `POST /api/v1/sql`, the dashboard) runs inside the auditor process on
a cursor of the one DuckDB instance that owns the audit file, because only one process may open that file.
Opening it read-only would not be enough even if we could: a read-only DuckDB still reads any file or URL
(`read_csv('/etc/passwd')`, `glob('/etc/*')`, `'data.csv'`), writes files with `COPY ... TO`, attaches other
databases, installs and loads extensions, and can `SET` all of that back on (see DuckDB's "Securing DuckDB").
So the sandbox has three layers:

1. `lock_down` turns the whole instance's external access, extension loading, and Python replacement
   scans off, caps memory and threads, then sets `lock_configuration` so no statement (not even the
   writer's) can undo any of it.
2. `run_query` parses the text and runs exactly one SELECT (or EXPLAIN of a SELECT); every other statement
   kind is refused before it runs, with a reason the user can act on.
3. The statement runs in a `BEGIN TRANSACTION READ ONLY` that is always rolled back, so a SELECT with a
   side effect (`nextval()`) fails instead of writing. A timer interrupts it after `timeout`, and at most
   `max_rows` rows are fetched.

What stays open on purpose: reading every table of the audit log, the catalog (`duckdb_settings()`,
`pragma_database_list`, which shows the file's path), and `checkpoint()` as a table function (it only
flushes the WAL). DuckDB itself keeps its own files readable once external access is off (the database, its
WAL, its spill directory), so `read_blob()` of the audit file works; it shows nothing a SELECT cannot.
Resource use is bounded by `memory_limit`, `threads` and the timeout, not prevented.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import threading
import time
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final

import duckdb

from jetdag.engine.errors import JetdagError

__all__ = ["QueryFailed", "QueryRefused", "QueryResult", "is_locked_down", "json_safe", "lock_down", "run_query"]


class QueryRefused(JetdagError):
    """A statement the SQL sandbox will not run; `reason` says why in words a user can act on."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class QueryFailed(JetdagError):
    """DuckDB could not run the query (syntax error, unknown column, out of memory, timed out).

    The message is DuckDB's, cleaned: its first line and any "Did you mean" hint."""

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class QueryResult:
    """One query's answer, ready for JSON.

    `types` are DuckDB's own type names (`str()` of the `DuckDBPyType` in the cursor's `description`), e.g.
    `UBIGINT`, `TIMESTAMP WITH TIME ZONE`, `JSON`, `STRUCT(a INTEGER)`, `VARCHAR[]`."""

    columns: list[str]
    types: list[str]
    rows: list[list[Any]]
    truncated: bool
    """More rows existed than `max_rows`; `rows` holds the first `max_rows`."""
    elapsed_ms: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "columns": self.columns,
            "types": self.types,
            "rows": self.rows,
            "truncated": self.truncated,
            "elapsed_ms": self.elapsed_ms,
        }


# -- lock_down ------------------------------------------------------------------------------------------------------

_LOCKED: Final = {
    "enable_external_access": "false",
    "autoinstall_known_extensions": "false",
    "autoload_known_extensions": "false",
    "lock_configuration": "true",
}
"""The settings `is_locked_down` checks: the ones the sandbox relies on."""


def _settings(con: duckdb.DuckDBPyConnection) -> dict[str, str]:
    rows = con.execute("SELECT name, value FROM duckdb_settings()").fetchall()
    return {str(name): str(value).lower() for name, value in rows}


def is_locked_down(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether `con`'s instance has had `lock_down` (its security settings hold and are locked)."""
    settings = _settings(con)
    return all(settings.get(name) == value for name, value in _LOCKED.items())


def lock_down(con: duckdb.DuckDBPyConnection, *, memory_limit: str = "1GB", threads: int = 2) -> None:
    """Make the whole database instance safe for users' SQL, for good.

    No file or network access (`allowed_directories` and `allowed_paths` emptied first, since DuckDB refuses to
    change them once external access is off, then `enable_external_access=false`), no extension auto-install,
    auto-load, community extensions or new repositories, no Python replacement scans (the SQL runs in our
    process: a bare name must never read one of its variables), an empty `allowed_configs`, `memory_limit`,
    `threads`, and last `lock_configuration=true` so no statement can undo any of it.

    Call it on the writer connection right after the schema is created (the writer needs none of those);
    settings this DuckDB does not know are skipped. Calling it again on a locked-down instance does nothing
    (memory_limit and threads can no longer change); on an instance locked some other way it raises."""
    known = _settings(con)
    if known.get("lock_configuration") == "true":
        if is_locked_down(con):
            return
        raise RuntimeError(
            "the DuckDB configuration is locked but not by lock_down: cannot make it safe for users' SQL"
        )
    memory = "'" + memory_limit.replace("'", "''") + "'"
    settings: list[tuple[str, str]] = [
        ("allowed_directories", "[]"),  # before enable_external_access: DuckDB refuses to change them after
        ("allowed_paths", "[]"),
        ("enable_external_access", "false"),
        ("autoinstall_known_extensions", "false"),
        ("autoload_known_extensions", "false"),
        ("allow_community_extensions", "false"),
        ("allow_extension_repositories", "'forbidden'"),
        ("python_enable_replacements", "false"),
        ("allowed_configs", "[]"),
        ("memory_limit", memory),
        ("threads", str(int(threads))),
    ]
    for name, value in settings:
        if name in known:
            con.execute(f"SET {name} = {value}")
    con.execute("SET lock_configuration = true")
    if not is_locked_down(con):  # pragma: no cover - a DuckDB that ignores one of the settings
        raise RuntimeError("lock_down did not take: the DuckDB settings are not what the sandbox needs")


# -- statement checks -----------------------------------------------------------------------------------------------

_ONLY: Final = "only SELECT (and EXPLAIN) statements run"
_READ_ONLY: Final = f"the audit log is read-only here; {_ONLY}"
_ELSEWHERE: Final = f"only the audit log can be queried here; {_ONLY}"
_LOCKED_SETTINGS: Final = "settings are locked"
_EXTENSIONS: Final = "extensions are off"
_TRANSACTIONS: Final = "transactions are not needed: each query runs alone in its own read-only transaction"

_KEYWORD_REASONS: Final[dict[str, str]] = {
    "COPY": _READ_ONLY,
    "EXPORT": _READ_ONLY,
    "IMPORT": _READ_ONLY,
    "CREATE": _READ_ONLY,
    "INSERT": _READ_ONLY,
    "UPDATE": _READ_ONLY,
    "DELETE": _READ_ONLY,
    "TRUNCATE": _READ_ONLY,
    "MERGE": _READ_ONLY,
    "DROP": _READ_ONLY,
    "ALTER": _READ_ONLY,
    "COMMENT": _READ_ONLY,
    "VACUUM": _READ_ONLY,
    "ANALYZE": _READ_ONLY,
    "CHECKPOINT": _READ_ONLY,
    "ATTACH": _ELSEWHERE,
    "DETACH": _ELSEWHERE,
    "SET": _LOCKED_SETTINGS,
    "RESET": _LOCKED_SETTINGS,
    "USE": _LOCKED_SETTINGS,
    "PRAGMA": f"{_LOCKED_SETTINGS}; read a pragma as a table function: SELECT * FROM pragma_table_info('events')",
    "INSTALL": _EXTENSIONS,
    "LOAD": _EXTENSIONS,
    "BEGIN": _TRANSACTIONS,
    "START": _TRANSACTIONS,
    "COMMIT": _TRANSACTIONS,
    "END": _TRANSACTIONS,
    "ROLLBACK": _TRANSACTIONS,
    "ABORT": _TRANSACTIONS,
    "CALL": "procedures are off; read a table function with SELECT * FROM name(...)",
    "PREPARE": "prepared statements are off; send the SELECT itself",
    "EXECUTE": "prepared statements are off; send the SELECT itself",
    "DEALLOCATE": "prepared statements are off; send the SELECT itself",
    "PIVOT": "this PIVOT needs several statements; list the values it pivots on: PIVOT t ON col IN ('a', 'b')",
    "UNPIVOT": "this UNPIVOT needs several statements; list the columns it unpivots",
}
"""Why a statement is refused, by the keyword it starts with (or, failing that, by its parsed type)."""

_TYPE_KEYWORDS: Final[dict[str, str]] = {
    "COPY": "COPY",
    "COPY_DATABASE": "COPY",
    "EXPORT": "EXPORT",
    "CREATE": "CREATE",
    "CREATE_FUNC": "CREATE",
    "INSERT": "INSERT",
    "UPDATE": "UPDATE",
    "DELETE": "DELETE",
    "MERGE_INTO": "MERGE",
    "DROP": "DROP",
    "ALTER": "ALTER",
    "VACUUM": "VACUUM",
    "ANALYZE": "ANALYZE",
    "ATTACH": "ATTACH",
    "DETACH": "DETACH",
    "SET": "SET",
    "VARIABLE_SET": "SET",
    "PRAGMA": "PRAGMA",
    "LOAD": "INSTALL/LOAD",
    "TRANSACTION": "BEGIN/COMMIT/ROLLBACK",
    "CALL": "CALL",
    "PREPARE": "PREPARE",
    "EXECUTE": "EXECUTE",
    "MULTI": "PIVOT",
}
"""The keyword named in a refusal when the statement does not start with a keyword we know (e.g. `WITH ... INSERT`)."""

_LEADING_WORD: Final = re.compile(r"\s*(?:FORCE\s+)?([A-Za-z]+)", re.IGNORECASE)
_EXPLAIN: Final = re.compile(r"\s*EXPLAIN\b\s*(?:ANALY[SZ]E\b)?(.*)\Z", re.IGNORECASE | re.DOTALL)
_EXPLAIN_OPTIONS: Final = re.compile(r"\s*\([^()]*\)(.*)\Z", re.DOTALL)


def _type(statement: duckdb.Statement) -> duckdb.StatementType | None:
    """The statement's type; None when the Python enum lacks it (UPDATE EXTENSIONS in DuckDB 2.0 raises ValueError)."""
    try:
        return statement.type
    except ValueError:
        return None


def _refusal(statement: duckdb.Statement) -> str:
    """The reason a statement other than SELECT/EXPLAIN is refused: `KIND is not allowed: why`."""
    match = _LEADING_WORD.match(statement.query)
    word = match.group(1).upper() if match else ""
    kind_of_type = _type(statement)
    type_name = kind_of_type.name if kind_of_type is not None else ""
    if word in _KEYWORD_REASONS:
        kind = word
    else:
        kind = _TYPE_KEYWORDS.get(type_name) or type_name.replace("_", " ") or word or "this statement"
    reason = _KEYWORD_REASONS.get(kind.split("/")[0], _ONLY)
    return f"{kind} is not allowed: {reason}"


def _parse(con: duckdb.DuckDBPyConnection, sql: str) -> list[duckdb.Statement]:
    try:
        return con.extract_statements(sql)
    except duckdb.Error as exc:
        raise QueryFailed(_clean(exc)) from None


def _check_explain(con: duckdb.DuckDBPyConnection, statement: duckdb.Statement) -> None:
    """EXPLAIN ANALYZE runs its statement, so an EXPLAIN is allowed only of one SELECT."""
    match = _EXPLAIN.match(statement.query)
    if match is None:
        raise QueryRefused("EXPLAIN could not be checked: write EXPLAIN [ANALYZE] SELECT ...")
    candidates = [match.group(1)]
    options = _EXPLAIN_OPTIONS.match(match.group(1))
    if options is not None:  # EXPLAIN (FORMAT json, ANALYZE) SELECT ...
        candidates.append(options.group(1))
    for text in candidates:
        try:
            inner = con.extract_statements(text)
        except (ValueError, duckdb.Error):
            continue
        if len(inner) != 1:
            continue
        if _type(inner[0]) == duckdb.StatementType.SELECT:
            return
        raise QueryRefused(f"EXPLAIN of {_refusal(inner[0])}")
    raise QueryRefused("EXPLAIN could not be checked: write EXPLAIN [ANALYZE] SELECT ...")


def _one_select(con: duckdb.DuckDBPyConnection, sql: str) -> duckdb.Statement:
    statements = _parse(con, sql)
    if not statements:
        raise QueryRefused("empty query: write one SELECT statement")
    if len(statements) > 1:
        raise QueryRefused(f"one statement at a time: found {len(statements)}")
    statement = statements[0]
    kind = _type(statement)
    if kind == duckdb.StatementType.SELECT:
        return statement
    if kind == duckdb.StatementType.EXPLAIN:
        _check_explain(con, statement)
        return statement
    raise QueryRefused(_refusal(statement))


# -- running --------------------------------------------------------------------------------------------------------

_HINTS: Final = ("Did you mean", "Candidate bindings")
_DOUBLED_QUOTES: Final = re.compile(r'""([^"]+)""')


def _lines(exc: BaseException) -> list[str]:
    text = _DOUBLED_QUOTES.sub(r'"\1"', str(exc))  # DuckDB 2.0 says ""name"" in some messages
    return [line.strip() for line in text.splitlines() if line.strip()] or [type(exc).__name__]


def _clean(exc: BaseException) -> str:
    """DuckDB's message: its first line, plus a "Did you mean" hint if it gave one (not the LINE/caret block)."""
    lines = _lines(exc)
    return "; ".join([lines[0], *(line for line in lines[1:] if line.startswith(_HINTS))])


def _gist(exc: BaseException) -> str:
    """The first line without DuckDB's error-class prefix."""
    first = _lines(exc)[0]
    for prefix in ("Permission Error: ", "TransactionContext Error: "):
        first = first.removeprefix(prefix)
    return first


class _Deadline:
    """Interrupts `con` after `timeout` seconds unless the `with` block ended first; never after it ended."""

    def __init__(self, con: duckdb.DuckDBPyConnection, timeout: float) -> None:
        self._con = con
        self._lock = threading.Lock()
        self._running = True
        self.fired = False
        self._timer = threading.Timer(timeout, self._interrupt)
        self._timer.daemon = True

    def _interrupt(self) -> None:
        with self._lock:
            if self._running:
                self.fired = True
                self._con.interrupt()

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._running = False
        self._timer.cancel()


def run_query(
    con: duckdb.DuckDBPyConnection, sql: str, *, max_rows: int = 10_000, timeout: float = 10.0
) -> QueryResult:
    """Run exactly one read-only statement on `con` (a cursor of a locked-down instance).

    Raises QueryRefused for anything but one SELECT (or EXPLAIN of one), for reading files or URLs and for
    writes; QueryFailed when DuckDB cannot run it (syntax, unknown names, out of memory, `timeout` passed).
    Raises RuntimeError if the instance was never locked down: the sandbox fails closed. `con` must not be
    inside a transaction of its own (each call opens and rolls back one); use one cursor per caller/thread."""
    if max_rows < 0:
        raise ValueError(f"max_rows must be >= 0, not {max_rows}")
    if not timeout > 0:
        raise ValueError(f"timeout must be > 0, not {timeout}")
    statement = _one_select(con, sql)
    if not is_locked_down(con):
        raise RuntimeError("run_query needs a locked-down database: call lock_down() on the writer first")
    con.execute("BEGIN TRANSACTION READ ONLY")
    try:
        started = time.perf_counter()
        with _Deadline(con, timeout) as deadline:
            try:
                con.execute(statement)
                description = con.description or []
                fetched = con.fetchmany(max_rows + 1)
            except duckdb.InterruptException:
                if deadline.fired:
                    raise QueryFailed(f"query timed out after {timeout:g}s (limit)") from None
                raise QueryFailed("query was interrupted") from None
            except duckdb.PermissionException as exc:
                raise QueryRefused(f"reading files or URLs is not allowed: {_gist(exc)}") from None
            except duckdb.TransactionException as exc:
                if "read-only" in str(exc):
                    raise QueryRefused(
                        f"writing is not allowed: the audit log is read-only here ({_gist(exc)})"
                    ) from None
                raise QueryFailed(_clean(exc)) from None
            except duckdb.Error as exc:
                raise QueryFailed(_clean(exc)) from None
            except (ValueError, OverflowError, TypeError) as exc:  # a value Python cannot hold
                raise QueryFailed(f"cannot convert a result value: {exc}") from None
        elapsed_ms = (time.perf_counter() - started) * 1000
    finally:
        con.execute("ROLLBACK")
    truncated = len(fetched) > max_rows
    return QueryResult(
        columns=[str(d[0]) for d in description],
        types=[str(d[1]) for d in description],
        rows=[[json_safe(v) for v in row] for row in fetched[:max_rows]],
        truncated=truncated,
        elapsed_ms=round(elapsed_ms, 3),
    )


# -- JSON-safe values -----------------------------------------------------------------------------------------------

_INT_MIN: Final = -(2**63)
_INT_MAX: Final = 2**64 - 1


def json_safe(value: Any) -> Any:
    """A DuckDB result value as JSON can carry it.

    datetime/date/time → ISO 8601; timedelta → seconds (float); Decimal → float; UUID → str; bytes → hex;
    lists, tuples (fixed-size arrays) and dicts (structs, maps) recursively, dict keys as strings;
    NaN and ±inf → None; ints beyond 64 bits (HUGEINT, BIGNUM) → str, since orjson refuses them."""
    if value is None or isinstance(value, str | bool):
        return value
    if isinstance(value, int):
        return value if _INT_MIN <= value <= _INT_MAX else str(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, Decimal):
        return json_safe(float(value))
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, dict):
        return {_key(k): json_safe(v) for k, v in value.items()}
    return str(value)


def _key(key: Any) -> str:
    safe = json_safe(key)
    return safe if isinstance(safe, str) else str(safe)
