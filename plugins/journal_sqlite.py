"""The embedded journal: SQLite in WAL mode, written by a background thread in batches.

Also holds ``ThreadedJournal``, the queue + writer-thread machinery the PostgreSQL
backend shares, so both keep the same ordering, idempotency and flush guarantees.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import os
import queue
import sqlite3
import threading
import time
from abc import abstractmethod
from collections.abc import Callable, Iterator, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

from orjson import dumps as _dumps
from pydantic import BaseModel, ConfigDict, Field

from quoteforge import hookimpl
from quoteforge.journal import Journal, JournalRecord
from quoteforge.registry import Register

__all__ = [
    "JournalError",
    "SqliteJournal",
    "SqliteJournalParams",
    "ThreadedJournal",
    "encode_payload",
    "encode_row",
    "factory",
    "json_array",
    "json_default",
    "quoteforge_register_journal_backends",
    "sqlite_json_batches",
]

#: One record as SQLite stores it: (event_id, kind, ts_ns, market, payload JSON).
Row = tuple[str, str, int, str, str]
ConnT = TypeVar("ConnT")


class JournalError(RuntimeError):
    """The journal cannot make records durable; trading must not go on without it."""


def json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(
        f"journal payload value {value!r} ({type(value).__name__}) is not JSON-serialisable; "
        "store numbers as int/str/Decimal and objects as dicts"
    )


def encode_payload(payload: dict[str, Any]) -> str:
    """Payloads are stored as JSON; Decimals become strings and enums their values.

    orjson writes the common payload; the few it refuses (integers beyond 64 bits,
    non-string keys) go through the stdlib, which writes them exactly. NaN and infinities
    become ``null`` (orjson) or are refused (stdlib): stored payloads are strict JSON.
    """
    try:
        return _dumps(payload, default=json_default).decode()
    except TypeError:
        return _encode_payload_stdlib(payload)


def _encode_payload_stdlib(payload: dict[str, Any]) -> str:
    return json.dumps(payload, separators=(",", ":"), default=json_default, allow_nan=False)


def encode_row(record: JournalRecord) -> str:
    """One record as the JSON text both backends insert from:
    ``[event_id, kind, ts_ns, market, payload]``, where ``payload`` is the text
    ``encode_payload`` made, as a JSON string (so the database gets that text back
    exactly, floats and big integers included, and never re-renders it)."""
    try:
        payload = _dumps(record.payload, default=json_default).decode()
    except TypeError:
        payload = _encode_payload_stdlib(record.payload)
    return _dumps((record.event_id, record.kind, record.ts_ns, record.market, payload)).decode()


def json_array(rows: Sequence[str]) -> str:
    """The JSON array of rows made by ``encode_row``: one parameter for a whole batch."""
    return "[" + ",".join(rows) + "]"


class _Flush:
    __slots__ = ("future", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop, future: asyncio.Future[None]) -> None:
        self.loop = loop
        self.future = future

    def resolve(self, error: BaseException | None, what: str = "journal write failed") -> None:
        def complete() -> None:
            if self.future.done():
                return
            if error is None:
                self.future.set_result(None)
            else:
                self.future.set_exception(JournalError(f"{what}: {error}"))

        with contextlib.suppress(RuntimeError):  # the loop is already closed
            self.loop.call_soon_threadsafe(complete)


_STOP = object()


class ThreadedJournal(Journal, Generic[ConnT]):
    """A journal whose ``append`` only serialises the record and queues it; one writer
    thread drains the queue in batches (one transaction each, in append order) and
    completes ``flush`` futures through ``loop.call_soon_threadsafe``.

    By default ``append`` encodes each record to one JSON text (``encode_row``), so a
    backend can insert a whole batch with one statement whose one parameter is
    ``json_array(rows)``: the writer thread then holds the GIL only to join strings, and
    the per-row work runs in the database with the GIL released instead of in Python
    (PostgreSQL; SQLite with ``insert="json"``). A backend may set ``_encoder`` to
    another encoding in its ``__init__``.

    A backend (``SqliteJournal``, ``PostgresJournal``) subclasses this and implements the
    storage hooks ``connect_writer``, ``write_batch``, ``disconnect_writer`` and
    ``count``, and may override ``prepare_storage``; this class calls them, the run
    calls the ``Journal`` API.

    A write that fails is retried with backoff on a fresh connection for ``retry_for_s``
    seconds (rows are idempotent by ``event_id``, so a retried batch is never doubled);
    after that the journal is failed: ``append`` and ``flush`` raise ``JournalError``.
    """

    def __init__(self, *, batch_max: int = 2000, retry_for_s: float = 10.0) -> None:
        if batch_max < 1:
            raise ValueError(f"batch_max must be >= 1, got {batch_max}")
        self.batch_max = batch_max
        self.retry_for_s = retry_for_s
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._closed = False
        # What ``append`` queues for one record and ``write_batch`` receives. Serialising
        # on the appending thread captures the payload as it is now and keeps the writer
        # thread's hold on the GIL short.
        self._encoder: Callable[[JournalRecord], Any] = encode_row
        self.appended = 0
        self.written = 0  # rows handed to the database (duplicates included)
        self.batches = 0

    # -- backend hooks, all called on the writer thread except prepare_storage ----------
    def prepare_storage(self) -> None:
        """Runs once in a worker thread before the writer starts (create files, schema).
        Backends override it; the default prepares nothing."""

    @abstractmethod
    def connect_writer(self) -> ConnT:
        """The writer thread's connection: opened when the writer starts and again
        after a failed write. Backends implement it."""

    @abstractmethod
    def write_batch(self, conn: ConnT, rows: Sequence[Any]) -> None:
        """Insert ``rows`` (what ``self._encoder`` made) in order, ignoring known event
        ids, and commit durably; raise to have the batch retried on a fresh connection.
        Backends implement it."""

    @abstractmethod
    def disconnect_writer(self, conn: ConnT) -> None:
        """Close a connection ``connect_writer`` opened (at close, or after a failed
        write). Backends implement it."""

    @abstractmethod
    def count(self) -> int:
        """How many records are durable (a fresh connection; for tools and tests)."""

    # -- Journal API ----------------------------------------------------------------------
    @property
    def name(self) -> str:
        return type(self).__name__

    async def open(self) -> None:
        if self._thread is not None:
            return
        try:
            await asyncio.to_thread(self.prepare_storage)
        except Exception as exc:
            self._error = exc
            raise JournalError(f"{self.name} cannot open: {exc}") from exc
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        self._thread = threading.Thread(
            target=self._run, args=(_Flush(loop, ready),), name=f"{self.name}-writer", daemon=True
        )
        self._thread.start()
        await ready

    def append(self, record: JournalRecord) -> None:
        if self._error is not None:
            raise JournalError(f"{self.name} has failed and accepts no records: {self._error}")
        if self._closed:
            raise JournalError(f"{self.name} is closed; open a new journal to append")
        self._queue.put(self._encoder(record))
        self.appended += 1

    async def flush(self) -> None:
        if self._error is not None:
            raise JournalError(f"{self.name} has failed: {self._error}")
        if self._thread is None:
            if self._queue.empty():
                return
            raise JournalError(f"{self.name} was never opened: call `await journal.open()`")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._queue.put(_Flush(loop, future))
        await future

    async def close(self) -> None:
        if self._closed:
            return
        try:
            await self.flush()
        finally:
            self._closed = True
            thread = self._thread
            if thread is not None:
                self._queue.put(_STOP)
                await asyncio.to_thread(thread.join)
                self._thread = None

    @property
    def pending(self) -> int:
        """Records appended but not yet written (approximate, for monitoring)."""
        return max(0, self.appended - self.written)

    # -- the writer thread ----------------------------------------------------------------
    def _run(self, ready: _Flush) -> None:
        try:
            conn = self.connect_writer()
        except BaseException as exc:
            self._error = exc
            ready.resolve(exc, f"{self.name} cannot connect")
            return
        ready.resolve(None)
        get = self._queue.get
        get_nowait = self._queue.get_nowait
        flushes: list[_Flush] = []
        try:
            while True:
                item = get()
                rows: list[Any] = []
                flushes = []
                stop = False
                while True:
                    if item is _STOP:
                        stop = True
                        break
                    if isinstance(item, _Flush):
                        flushes.append(item)
                    else:
                        rows.append(item)
                        if len(rows) >= self.batch_max:
                            break
                    try:
                        item = get_nowait()
                    except queue.Empty:
                        break
                if rows:
                    conn = self._write_with_retry(conn, rows)
                for flush in flushes:
                    flush.resolve(None)
                if stop:
                    return
        except BaseException as exc:
            self._error = exc
            for flush in flushes:
                flush.resolve(exc, f"{self.name}: journal write failed")
            self._drain_failed()
        finally:
            with contextlib.suppress(Exception):
                self.disconnect_writer(conn)

    def _write_with_retry(self, conn: ConnT, rows: list[Any]) -> ConnT:
        deadline = time.monotonic() + self.retry_for_s
        delay = 0.05
        # Why the last reconnect failed: after one, the write fails only with "the
        # connection is closed", which hides what is wrong (server down, bad file).
        reconnect_error: Exception | None = None
        while True:
            try:
                self.write_batch(conn, rows)
            except Exception as exc:
                if time.monotonic() + delay > deadline:
                    raise JournalError(
                        f"{reconnect_error or exc} (retried for {self.retry_for_s:g} s); "
                        "nothing appended after the last flush is durable: stop trading, "
                        "fix the storage, then `quoteforge run --resume RUN_DIR`"
                    ) from exc
                with contextlib.suppress(Exception):
                    self.disconnect_writer(conn)
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
                try:
                    conn = self.connect_writer()
                    reconnect_error = None
                except Exception as error:
                    reconnect_error = error
                continue
            self.written += len(rows)
            self.batches += 1
            return conn

    def _drain_failed(self) -> None:
        # Keep answering flushes (with the error) so that no caller waits forever.
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if isinstance(item, _Flush):
                item.resolve(self._error, f"{self.name}: journal write failed")


# ---------------------------------------------------------------------------------------
# SQLite
# ---------------------------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS journal (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT    NOT NULL UNIQUE,
    kind     TEXT    NOT NULL,
    ts_ns    INTEGER NOT NULL,
    market   TEXT    NOT NULL,
    payload  TEXT    NOT NULL
)
"""
_INSERT = (
    "INSERT OR IGNORE INTO journal (event_id, kind, ts_ns, market, payload) VALUES (?, ?, ?, ?, ?)"
)
# A whole batch in one statement: its one parameter is the JSON array of encode_row
# texts, unpacked by SQLite with the GIL released. ->> returns the payload string's text
# as it was written and a JSON integer as an INTEGER; rows go in by array index, so
# seq follows append order (OR IGNORE also drops a repeated id within the batch).
_INSERT_JSON = (
    "INSERT OR IGNORE INTO journal (event_id, kind, ts_ns, market, payload) "
    "SELECT value->>0, value->>1, value->>2, value->>3, value->>4 FROM json_each(?) ORDER BY key"
)
#: The first SQLite with the ->> operator (and with its JSON functions built in by default).
SQLITE_JSON_MIN_VERSION = (3, 38, 0)
_BUSY_TIMEOUT_MS = 30_000


def sqlite_json_batches() -> bool:
    """Whether this process's SQLite can insert a batch from one JSON text: version
    3.38 or later, and its JSON functions work (a build can leave them out)."""
    if sqlite3.sqlite_version_info < SQLITE_JSON_MIN_VERSION:
        return False
    try:
        conn = sqlite3.connect(":memory:")
        try:
            row = conn.execute(
                "SELECT value->>0, value->>1 FROM json_each(?)", ('[["x",1]]',)
            ).fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return False
    return bool(row == ("x", 1))


def _encode_tuple(record: JournalRecord) -> Row:
    return (
        record.event_id,
        record.kind,
        record.ts_ns,
        record.market,
        encode_payload(record.payload),
    )


@contextlib.contextmanager
def _readable(path: Path) -> Iterator[None]:
    """Turns SQLite's "malformed" or "not a database" (a corrupt or truncated journal
    file) into an error that names the file and what to do; other errors pass."""
    try:
        yield
    except sqlite3.DatabaseError as exc:
        if type(exc) is not sqlite3.DatabaseError and "malformed" not in str(exc):
            raise
        raise JournalError(
            f"journal {path} is damaged ({exc}): restore it from a backup, or save what "
            f"is readable with `sqlite3 {path} .recover | sqlite3 recovered.sqlite` and "
            "start a new run; a live run must then be reconciled with the venue"
        ) from exc


def _sqlite_connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
    return conn


class SqliteJournal(ThreadedJournal[sqlite3.Connection]):
    """The journal in one SQLite file (WAL mode: readers never block the writer).

    ``synchronous="full"`` (default) fsyncs the WAL at every batch commit, so a record
    is on disk once ``flush()`` returns even if the machine loses power; ``"normal"``
    survives a process crash but not a power cut, and is faster on slow disks.

    ``insert`` is how a batch goes in (one transaction either way):

    - ``"executemany"`` (default): one statement per row, its parameters bound in
      Python, the GIL released and taken back around every row's step.
    - ``"json"``: one ``INSERT ... SELECT FROM json_each(?)`` per batch whose one
      parameter is the batch as JSON text (``encode_row``, as PostgreSQL does), so the
      writer holds the GIL only to join strings; SQLite 3.38+. SQLite spends about
      1.4 µs more CPU per row unpacking the JSON, and on a 2-core machine that CPU costs
      a busy appending thread more than the GIL hand-offs it saves (see
      docs/journal.md), hence not the default.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: Literal["full", "normal"] = "full",
        batch_max: int = 2000,
        retry_for_s: float = 5.0,
        insert: Literal["executemany", "json"] = "executemany",
    ) -> None:
        super().__init__(batch_max=batch_max, retry_for_s=retry_for_s)
        if synchronous not in ("full", "normal"):
            raise ValueError(f"synchronous must be 'full' or 'normal', got {synchronous!r}")
        if insert not in ("executemany", "json"):
            raise ValueError(f"insert must be 'executemany' or 'json', got {insert!r}")
        if insert == "json" and not sqlite_json_batches():
            raise ValueError(
                f"insert='json' needs SQLite {'.'.join(map(str, SQLITE_JSON_MIN_VERSION))} "
                f"or later with its JSON functions; this is {sqlite3.sqlite_version}"
            )
        self.path = Path(path)
        self._writer_lock: Any = None  # the open lock file while this journal writes
        self.synchronous = synchronous
        self.insert = insert
        if insert == "executemany":
            self._encoder = _encode_tuple

    @property
    def name(self) -> str:
        return f"sqlite journal {self.path}"

    def prepare_storage(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_writer()
        conn = _sqlite_connect(self.path)
        try:
            with _readable(self.path):
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise JournalError(
                        f"{self.path}: SQLite refused WAL mode ({mode}); put the journal "
                        "on a local file system"
                    )
                conn.execute(_SCHEMA)
        finally:
            conn.close()

    def _lock_writer(self) -> None:
        """One writer per journal file: a second run (or a run resumed while its first
        life still runs) would mix its records into this one's, and its deterministic
        event ids would be dropped as duplicates. The lock is the kernel's, so a process
        that dies releases it; readers never take it."""
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
            return
        lock = self.path.with_name(self.path.name + ".lock").open("a+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "unknown"
            lock.close()
            raise JournalError(
                f"journal {self.path} is being written by another process (pid {holder}): "
                "stop that run first, or give this run its own run folder or journal path"
            ) from None
        lock.seek(0)
        lock.truncate()
        lock.write(str(os.getpid()))
        lock.flush()
        self._writer_lock = lock

    def _unlock_writer(self) -> None:
        lock, self._writer_lock = self._writer_lock, None
        if lock is not None:
            lock.close()

    async def open(self) -> None:
        try:
            await super().open()
        except BaseException:
            self._unlock_writer()
            raise

    async def close(self) -> None:
        try:
            await super().close()
        finally:
            self._unlock_writer()

    def connect_writer(self) -> sqlite3.Connection:
        conn = _sqlite_connect(self.path)
        conn.execute(f"PRAGMA synchronous = {self.synchronous.upper()}")
        return conn

    def write_batch(self, conn: sqlite3.Connection, rows: Sequence[Any]) -> None:
        if self.insert == "json":
            # One statement in autocommit mode is one transaction: all rows or none,
            # committed (and fsynced, with synchronous=full) before execute returns.
            conn.execute(_INSERT_JSON, (json_array(rows),))
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(_INSERT, rows)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def disconnect_writer(self, conn: sqlite3.Connection) -> None:
        conn.close()

    def read(self, kinds: tuple[str, ...] | None = None) -> Iterator[JournalRecord]:
        """Committed records in append order; safe while a run is writing the file."""
        if not self.path.exists():
            return iter(())
        return _read_sqlite(self.path, kinds)

    def count(self) -> int:
        if not self.path.exists():
            return 0
        conn = _sqlite_connect(self.path)
        try:
            with _readable(self.path):
                return int(conn.execute("SELECT count(*) FROM journal").fetchone()[0])
        finally:
            conn.close()


def _read_sqlite(path: Path, kinds: tuple[str, ...] | None) -> Iterator[JournalRecord]:
    conn = _sqlite_connect(path)
    try:
        sql = "SELECT event_id, kind, ts_ns, market, payload FROM journal"
        args: tuple[str, ...] = ()
        if kinds:
            sql += f" WHERE kind IN ({', '.join('?' * len(kinds))})"
            args = tuple(kinds)
        sql += " ORDER BY seq"
        with _readable(path):
            cursor = conn.execute(sql, args)
            rows = cursor.fetchmany(1000)
        while rows:
            for event_id, kind, ts_ns, market, payload in rows:
                yield JournalRecord(event_id, kind, ts_ns, market, json.loads(payload))
            with _readable(path):
                rows = cursor.fetchmany(1000)
    finally:
        conn.close()


# ---------------------------------------------------------------------------------------
# Plugin registration
# ---------------------------------------------------------------------------------------


class SqliteJournalParams(BaseModel):
    """Parameters of the ``sqlite`` journal backend."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    path: str = Field(
        default="journal.sqlite",
        description="Journal file; a relative path is inside the run folder.",
    )
    synchronous: Literal["full", "normal"] = Field(
        default="full",
        description=(
            "full: every batch is fsynced (survives power loss); normal: survives a "
            "process crash only, faster on slow disks."
        ),
    )
    batch_max: int = Field(
        default=2000, ge=1, le=100_000, description="Most records written in one transaction."
    )


def factory(params: SqliteJournalParams, run_dir: str | Path) -> SqliteJournal:
    path = Path(params.path)
    if not path.is_absolute():
        path = Path(run_dir) / path
    return SqliteJournal(path, synchronous=params.synchronous, batch_max=params.batch_max)


@hookimpl
def quoteforge_register_journal_backends(register: Register) -> None:
    register(
        "sqlite",
        factory,
        params=SqliteJournalParams,
        description="SQLite file in the run folder (WAL, background writer); the default.",
    )
