"""One contract suite for every journal backend: SQLite (embedded) and PostgreSQL (real).

PostgreSQL must listen on 127.0.0.1:5432 with trust auth and a database ``test``
(override with QUOTEFORGE_TEST_PG_DSN). Without it the PostgreSQL cases are skipped
locally and fail under CI.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, cast

import pydantic
import pytest
from memory_journal import MemoryJournal

from quoteforge.clock import SimClock
from quoteforge.journal import Journal, JournalRecord, OrderStates, order_states
from quoteforge.model import Fill, Liquidity, OrderStatus, OrderUpdate, Side
from quoteforge.orders import OrderManager, order_to_dict
from quoteforge.plugins import journal_postgres, journal_sqlite
from quoteforge.plugins.journal_postgres import PostgresJournal, PostgresJournalParams
from quoteforge.plugins.journal_sqlite import (
    JournalError,
    SqliteJournal,
    SqliteJournalParams,
    ThreadedJournal,
    encode_payload,
    encode_row,
    sqlite_json_batches,
)
from quoteforge.registry import PluginRegistry

PG_DSN = os.environ.get("QUOTEFORGE_TEST_PG_DSN", "postgresql://127.0.0.1:5432/test")
PG_TABLE = "quoteforge_journal_test"
Insert = Literal["executemany", "json"]  # SqliteJournal's two ways to insert a batch


def require_sqlite_json() -> None:
    """The one-statement SQLite insert needs SQLite 3.38+: skipped locally on an older
    one, failed under CI (whose machine has a newer one)."""
    if sqlite_json_batches():
        return
    message = f"SQLite {sqlite3.sqlite_version} has no ->> (3.38+) for insert='json'"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message)
    pytest.skip(message)


@dataclass
class Backend:
    """Builds journals on one storage location, so a test can "reopen" it."""

    kind: str
    build: Callable[[], ThreadedJournal[Any]]
    source: str  # Python expression that builds the same journal in another process
    # Holds the storage's write lock from another connection; yields a durable count.
    hold_write_lock: Callable[[], AbstractContextManager[Callable[[], int]]]
    cleanup: Callable[[], None] = lambda: None
    opened: list[Journal] = field(default_factory=list)

    async def open(self) -> ThreadedJournal[Any]:
        journal = self.build()
        await journal.open()
        self.opened.append(journal)
        return journal


@pytest.fixture(params=["sqlite", "sqlite-json", "postgres"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param.startswith("sqlite"):
        # "sqlite": row by row (the default); "sqlite-json": a batch in one statement
        # from one JSON text (SQLite 3.38+).
        insert: Insert = "json" if request.param == "sqlite-json" else "executemany"
        if insert == "json":
            require_sqlite_json()
        path = tmp_path / "run" / "journal.sqlite"
        made = Backend(
            request.param,
            lambda: SqliteJournal(path, batch_max=500, insert=insert),
            f"SqliteJournal({str(path)!r}, insert={insert!r})",
            lambda: _sqlite_write_lock(path),
        )
    else:
        dsn = request.getfixturevalue("pg_dsn")
        run_id = f"test-{uuid.uuid4().hex[:12]}"
        made = Backend(
            "postgres",
            lambda: PostgresJournal(dsn, run_id=run_id, table=PG_TABLE, batch_max=500),
            f"PostgresJournal({dsn!r}, run_id={run_id!r}, table={PG_TABLE!r})",
            lambda: _postgres_write_lock(dsn, run_id),
            lambda: PostgresJournal(dsn, run_id=run_id, table=PG_TABLE).drop_run(),
        )
    yield made
    for journal in made.opened:
        await journal.close()
    made.cleanup()


@contextlib.contextmanager
def _sqlite_write_lock(path: Path) -> Iterator[Callable[[], int]]:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")  # the one write lock of the database file
        yield lambda: int(conn.execute("SELECT count(*) FROM journal").fetchone()[0])
        conn.execute("ROLLBACK")
    finally:
        conn.close()


@contextlib.contextmanager
def _postgres_write_lock(dsn: str, run_id: str) -> Iterator[Callable[[], int]]:
    import psycopg
    from psycopg import sql

    with psycopg.connect(dsn) as conn:
        table = sql.Identifier(PG_TABLE)
        conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(table))
        query = sql.SQL("SELECT count(*) FROM {} WHERE run_id = %s").format(table)

        def durable() -> int:
            row = conn.execute(query, (run_id,)).fetchone()
            return int(row[0]) if row else 0

        yield durable
        conn.rollback()


def record(i: int, kind: str = "fill", event_id: str | None = None) -> JournalRecord:
    return JournalRecord(
        event_id=event_id or f"ev-{i}",
        kind=kind,
        ts_ns=1_700_000_000_000_000_000 + i,
        market="sim:BTCUSDT",
        payload={"i": i, "fee": Decimal("0.0001"), "side": Side.BUY, "tags": ["a", "b"]},
    )


# ---------------------------------------------------------------------------------------
# The contract
# ---------------------------------------------------------------------------------------


async def test_records_come_back_in_append_order(backend: Backend) -> None:
    journal = await backend.open()
    rng = random.Random(7)
    ids = [f"id-{rng.getrandbits(48):012x}" for _ in range(2500)]
    kinds = ("order", "order_update", "fill", "risk")
    for i, event_id in enumerate(ids):
        journal.append(record(i, kinds[i % 4], event_id))
    await journal.flush()

    stored = list(journal.read())
    assert [r.event_id for r in stored] == ids
    assert [r.kind for r in stored[:4]] == list(kinds)
    fills = list(journal.read(kinds=("fill", "order")))
    assert [r.event_id for r in fills] == [ids[i] for i in range(len(ids)) if i % 4 in (0, 2)]
    first = stored[0]
    assert first.ts_ns == 1_700_000_000_000_000_000
    assert first.market == "sim:BTCUSDT"
    # Payloads are JSON: Decimals keep their digits as strings, enums become values.
    assert first.payload == {"i": 0, "fee": "0.0001", "side": 1, "tags": ["a", "b"]}


# Numbers that a float or a 64-bit integer would round, and text that needs escaping.
EXACT_PAYLOAD: dict[str, Any] = {
    "tenth": 0.1,
    "third": 1 / 3,
    "tiny": 5e-324,
    "neg": -2.5e-8,
    "big": 2**70,
    "neg_big": -(2**64) - 1,
    "i64_max": 2**63 - 1,
    "dec": Decimal("123456789012345678901234567890.123456789"),
    "text": 'quote " back \\ slash / tab \t nl \n nul \x01 é 漢字 🚀 \u2028',
    "nested": {"list": [1.5, 1e-7, None, True, {"deep": [2**65]}]},
}


def typed(value: Any) -> Any:
    """``value`` with the type of every leaf next to it (and dicts in key order), so
    that 1 and 1.0, or True and 1, do not compare equal."""
    if isinstance(value, dict):
        return sorted((key, typed(item)) for key, item in value.items())
    if isinstance(value, list):
        return [typed(item) for item in value]
    return (type(value).__name__, value)


async def test_numbers_and_text_come_back_exactly(backend: Backend) -> None:
    journal = await backend.open()
    journal.append(JournalRecord("exact", "run", 2**63 - 1, "sim:ÉTH/€", EXACT_PAYLOAD))
    journal.append(JournalRecord('quote"d\\id', "run", 0, "m", {"k": 1}))
    await journal.flush()
    first, second = journal.read()
    assert (first.event_id, first.ts_ns, first.market) == ("exact", 2**63 - 1, "sim:ÉTH/€")
    expected = dict(EXACT_PAYLOAD, dec=str(EXACT_PAYLOAD["dec"]))
    # Types too: a float never comes back as an int, a big int never as a float.
    assert typed(first.payload) == typed(expected)
    assert second.event_id == 'quote"d\\id'


async def test_an_event_id_is_stored_once(backend: Backend) -> None:
    journal = await backend.open()
    journal.append(JournalRecord("dup", "fill", 1, "m", {"v": 1}))
    journal.append(JournalRecord("dup", "fill", 2, "m", {"v": 2}))  # same batch
    journal.append(JournalRecord("other", "fill", 3, "m", {"v": 3}))
    await journal.flush()
    journal.append(JournalRecord("dup", "fill", 4, "m", {"v": 4}))  # later batch
    await journal.flush()
    stored = list(journal.read())
    assert [(r.event_id, r.payload["v"]) for r in stored] == [("dup", 1), ("other", 3)]
    assert journal.count() == 2


async def test_flushed_records_survive_a_crash(backend: Backend) -> None:
    script = (
        "import asyncio, os\n"
        "from quoteforge.journal import JournalRecord\n"
        "from quoteforge.plugins.journal_sqlite import SqliteJournal\n"
        "from quoteforge.plugins.journal_postgres import PostgresJournal\n"
        "async def main():\n"
        f"    journal = {backend.source}\n"
        "    await journal.open()\n"
        "    for i in range(300):\n"
        "        journal.append(JournalRecord(f'c{i}', 'fill', i, 'm', {'i': i}))\n"
        "    await journal.flush()\n"
        "    os._exit(3)  # die without close(): only flush() stands behind the data\n"
        "asyncio.run(main())\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert done.returncode == 3, done.stderr.decode()

    reopened = await backend.open()
    assert [r.event_id for r in reopened.read()] == [f"c{i}" for i in range(300)]
    # Appending after the restart continues the same order and still drops known ids.
    reopened.append(JournalRecord("c0", "fill", 0, "m", {}))
    reopened.append(JournalRecord("after", "fill", 1, "m", {}))
    await reopened.flush()
    ids = [r.event_id for r in backend.build().read()]
    assert ids[-1] == "after"
    assert len(ids) == 301


async def test_readers_see_a_consistent_prefix_while_the_run_writes(backend: Backend) -> None:
    journal = await backend.open()
    reader = backend.build()  # another handle on the same storage, as a report tool has
    expected = [f"w{i}" for i in range(6000)]
    reads: list[list[str]] = []
    stop = asyncio.Event()

    async def write() -> None:
        for start in range(0, len(expected), 200):
            for i in range(start, start + 200):
                journal.append(record(i, event_id=expected[i]))
            if start % 1000 == 0:
                await journal.flush()
            await asyncio.sleep(0.001)
        await journal.flush()
        stop.set()

    async def read() -> None:
        while not stop.is_set():
            reads.append(await asyncio.to_thread(lambda: [r.event_id for r in reader.read()]))

    await asyncio.wait_for(asyncio.gather(write(), read()), timeout=60)
    assert len(reads) >= 2
    for seen in reads:
        assert seen == expected[: len(seen)]
    assert [r.event_id for r in reader.read()] == expected


async def test_appending_never_waits_for_the_storage(backend: Backend) -> None:
    """Appends only queue: while another connection holds the storage's write lock (a
    slow disk or a busy database, as far as the writer can tell), a burst of appends
    from the event loop returns and the loop keeps turning; the records become durable
    once the lock is released. An append that wrote synchronously would block here."""
    journal = await backend.open()
    journal.append(record(0))
    await journal.flush()
    turns = 0

    async def ticker() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    with backend.hold_write_lock() as durable:
        task = asyncio.create_task(ticker())
        for burst in range(30):
            for i in range(100):
                journal.append(record(1 + burst * 100 + i))
            await asyncio.sleep(0)
        task.cancel()
        # Nothing could be written meanwhile, yet every append returned at once.
        assert durable() == 1
        assert turns >= 29, "the event loop did not turn between the bursts"
    await journal.flush()
    assert journal.count() == 3001
    assert [r.event_id for r in journal.read()][-1] == "ev-3000"


async def test_a_closed_journal_refuses_records(backend: Backend) -> None:
    journal = await backend.open()
    journal.append(record(1))
    await journal.close()
    assert [r.event_id for r in journal.read()] == ["ev-1"]
    with pytest.raises(JournalError, match="closed"):
        journal.append(record(2))
    await journal.close()  # closing twice is harmless


async def test_order_manager_restores_from_the_journal(backend: Backend) -> None:
    journal = await backend.open()
    clock = SimClock(1_700_000_000_000_000_000)
    om = OrderManager(journal, clock, "qf")
    a = om.new_order("sim", "BTCUSDT", Side.BUY, 10, 100)
    b = om.new_order("sim", "BTCUSDT", Side.SELL, 10, 110)
    om.apply_update(OrderUpdate("sim", a.client_id, OrderStatus.OPEN, 1, exchange_id="A"))
    om.apply_fill(
        Fill(
            "sim",
            "BTCUSDT",
            "t1",
            a.client_id,
            Side.BUY,
            100,
            4,
            Decimal("0.01"),
            "USDT",
            Liquidity.MAKER,
            2,
        )
    )
    om.request_cancel(a.client_id)
    om.reject_cancel(a.client_id, "too late")
    om.request_cancel(b.client_id)
    om.apply_update(OrderUpdate("sim", b.client_id, OrderStatus.CANCELLED, 3))
    await journal.flush()

    restored = OrderManager(None, clock, "qf")
    restored.restore(backend.build().read(kinds=("order", "order_update", "fill")))
    assert [order_to_dict(o) for o in restored.all_orders()] == [
        order_to_dict(o) for o in om.all_orders()
    ]
    assert [o.client_id for o in restored.all_working()] == [a.client_id]
    assert restored.open_lots("sim:BTCUSDT", Side.BUY) == 6


# Format 1 (before #19): every order record held the whole order and the manager's meta.
_V1_ORDER = {
    "client_id": "qf-old-1", "venue": "sim", "symbol": "BTCUSDT", "side": "buy",
    "qty_lots": 10, "price_ticks": 100, "order_type": "limit", "tif": "gtc",
    "strategy": "mm", "level": 0, "status": "pending_new", "filled_lots": 0,
    "exchange_id": None, "created_ns": 5, "updated_ns": 5, "reason": "", "extra": {},
}  # fmt: skip
_V1_FILL = {
    "venue": "sim", "symbol": "BTCUSDT", "fill_id": "t1", "client_id": "qf-old-1",
    "side": "buy", "price_ticks": 100, "qty_lots": 4, "fee": "0.01", "fee_asset": "USDT",
    "liquidity": "maker", "ts_ns": 7, "strategy": "mm",
}  # fmt: skip


def _v1_journal() -> list[JournalRecord]:
    opened = {**_V1_ORDER, "status": "open", "exchange_id": "X", "updated_ns": 6}
    filled = {**opened, "status": "partially_filled", "filled_lots": 4, "updated_ns": 7}
    pending = {**filled, "status": "pending_cancel", "updated_ns": 8}
    keys = {"pending_new:0": 1, "open:0": 1}
    return [
        JournalRecord("sim:qf-old-1:pending_new:0", "order", 5, "sim:BTCUSDT", {
            "order": _V1_ORDER, "meta": {"prior": None, "event_keys": {"pending_new:0": 1}}}),
        JournalRecord("sim:qf-old-1:open:0", "order_update", 6, "sim:BTCUSDT", {
            "order": opened, "meta": {"prior": None, "event_keys": keys},
            "update": {"venue": "sim", "client_id": "qf-old-1", "status": "open", "ts_ns": 6,
                       "exchange_id": "X", "filled_lots": None, "price_ticks": None,
                       "qty_lots": None, "reason": ""}}),
        JournalRecord("sim:fill:t1", "fill", 7, "sim:BTCUSDT", {
            "fill": _V1_FILL, "order": filled, "meta": {"prior": None, "event_keys": keys}}),
        JournalRecord("sim:qf-old-1:pending_cancel:4", "order_update", 8, "sim:BTCUSDT", {
            "order": pending, "meta": {"prior": "partially_filled",
                                       "event_keys": {**keys, "pending_cancel:4": 1}}}),
    ]  # fmt: skip


def test_a_format_1_journal_restores_and_continues_in_format_2() -> None:
    old = _v1_journal()
    om = OrderManager(None, SimClock(10), "qf")
    assert om.restore(old) == 4
    order = om.get("qf-old-1")
    assert order is not None and order_to_dict(order) == old[-1].payload["order"]
    assert om.prior_status("qf-old-1") is OrderStatus.PARTIALLY_FILLED
    assert om.has_fill("sim", "t1")
    # The venue rejects the cancel: the restored manager writes a format-2 change with
    # the event id the old bookkeeping leads to, and readers rebuild the mixed journal.
    journal = MemoryJournal()
    om.journal = journal
    om.reject_cancel("qf-old-1", "too late", ts_ns=9)
    new = journal.records
    assert [r.event_id for r in new] == ["sim:qf-old-1:partially_filled:4"]
    assert set(new[0].payload["order"]) == {"client_id", "status", "updated_ns", "reason"}
    assert new[0].payload["prior"] is None
    assert order_states(old + new) == {"qf-old-1": order_to_dict(order)}


def test_order_records_that_cannot_be_read_are_refused_clearly() -> None:
    newer = JournalRecord("sim:qf-1:pending_new:0", "order", 1, "sim:BTCUSDT", {
        "order": {**_V1_ORDER, "client_id": "qf-1"}, "format": 3})  # fmt: skip
    with pytest.raises(ValueError, match="order record format 3; this quoteforge reads formats 1-"):
        OrderStates().apply(newer)
    change = JournalRecord("sim:qf-1:open:0", "order_update", 2, "sim:BTCUSDT", {
        "order": {"client_id": "qf-1", "status": "open"}})  # fmt: skip
    with pytest.raises(ValueError, match="read the kinds order, order_update and fill together"):
        OrderManager(None, SimClock(10), "qf").restore([change])


# ---------------------------------------------------------------------------------------
# Backend specifics: failures, parameters and plugin registration
# ---------------------------------------------------------------------------------------


INSERTS = pytest.mark.parametrize("insert", ["executemany", "json"])


def _sqlite_journal(path: Path, insert: Insert, **kwargs: Any) -> SqliteJournal:
    if insert == "json":
        require_sqlite_json()
    return SqliteJournal(path, insert=insert, **kwargs)


@INSERTS
async def test_sqlite_stores_the_encoded_text_and_integer_times(
    tmp_path: Path, insert: Insert
) -> None:
    path = tmp_path / "j.sqlite"
    journal = _sqlite_journal(path, insert)
    await journal.open()
    payloads: list[dict[Any, Any]] = [
        EXACT_PAYLOAD,
        {"huge": 1e300, "neg_zero": -0.0, "nan": float("nan"), "inf": float("-inf")},
        {1: "an int key", "big": 2**64},
        {},
    ]
    for i, payload in enumerate(payloads):
        journal.append(JournalRecord(f"e{i}", "run", 1_700_000_000_000_000_000 + i, "m€", payload))
    await journal.close()

    conn = sqlite3.connect(path)
    try:
        rows = conn.execute(
            "SELECT typeof(event_id), typeof(kind), typeof(ts_ns), ts_ns, typeof(market),"
            " market, typeof(payload), payload FROM journal ORDER BY seq"
        ).fetchall()
    finally:
        conn.close()
    assert [row[7] for row in rows] == [encode_payload(payload) for payload in payloads]
    assert [row[3] for row in rows] == [1_700_000_000_000_000_000 + i for i in range(4)]
    for row in rows:
        assert row[:3] == ("text", "text", "integer")
        assert row[4:7] == ("text", "m€", "text")
    # What encode_payload wrote is what the payload reads back as.
    second, third = list(journal.read())[1:3]
    assert typed(second.payload) == typed(
        {"huge": 1e300, "neg_zero": -0.0, "nan": None, "inf": None}
    )
    assert typed(third.payload) == typed({"1": "an int key", "big": 2**64})


def test_payload_encoding() -> None:
    # orjson writes the common case; what it refuses, the stdlib writes exactly.
    assert encode_payload({"p": 0.1, "d": Decimal("1.10"), "s": Side.SELL}) == (
        '{"p":0.1,"d":"1.10","s":-1}'
    )
    assert (
        encode_payload({"big": 2**64, 2: [0.5]})  # type: ignore[dict-item]
        == '{"big":18446744073709551616,"2":[0.5]}'
    )
    assert encode_payload({"nan": float("nan")}) == '{"nan":null}'
    with pytest.raises(ValueError, match="not JSON compliant"):
        encode_payload({"big": 2**64, "nan": float("nan")})
    with pytest.raises(TypeError, match=r"\(object\) is not JSON-serialisable"):
        encode_payload({"what": object()})
    # A row is the record as one JSON array, the payload text inside it as a string.
    assert encode_row(JournalRecord("id", "fill", 5, "m", {"a": 1})) == (
        r'["id","fill",5,"m","{\"a\":1}"]'
    )
    payload = {"a": 'b"\\c\n', "f": 0.1}
    row = encode_row(JournalRecord('id"1', "fill", 5, "m", payload))
    assert json.loads(row) == ['id"1', "fill", 5, "m", encode_payload(payload)]


@INSERTS
async def test_sqlite_one_batch_keeps_order_and_drops_repeats(
    tmp_path: Path, insert: Insert
) -> None:
    # Queued before the writer starts, 300 records make one batch, with repeated ids.
    journal = _sqlite_journal(tmp_path / "j.sqlite", insert, batch_max=1000)
    ids = [f"b{i}" for i in range(300)]
    for position, repeated in ((128, 127), (129, 5), (256, 255), (290, 288)):
        ids[position] = ids[repeated]
    for i, event_id in enumerate(ids):
        journal.append(record(i, event_id=event_id))
    await journal.open()
    await journal.close()
    assert journal.batches == 1
    stored = list(journal.read())
    assert [r.event_id for r in stored] == list(dict.fromkeys(ids))
    assert [r.payload["i"] for r in stored] == [ids.index(r.event_id) for r in stored]


def test_sqlite_json_insert_needs_sqlite_3_38(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "j.sqlite"
    assert SqliteJournal(path).insert == "executemany"
    if sqlite3.sqlite_version_info >= (3, 38):
        assert sqlite_json_batches()
        assert SqliteJournal(path, insert="json").insert == "json"
    monkeypatch.setattr(sqlite3, "sqlite_version_info", (3, 37, 2))
    monkeypatch.setattr(sqlite3, "sqlite_version", "3.37.2")
    assert not sqlite_json_batches()
    assert SqliteJournal(path).insert == "executemany"
    with pytest.raises(
        ValueError, match=r"insert='json' needs SQLite 3\.38\.0 .* this is 3\.37\.2"
    ):
        SqliteJournal(path, insert="json")
    with pytest.raises(ValueError, match="insert must be"):
        SqliteJournal(path, insert=cast(Any, "bulk"))


async def test_sqlite_insert_paths_share_one_file(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    for n, insert in enumerate(("executemany", "json", "executemany")):
        journal = _sqlite_journal(path, cast(Insert, insert))
        await journal.open()
        journal.append(record(n - 1 if n else 0))  # after the first: a known id, ignored
        journal.append(record(n + 1))
        await journal.close()
    stored = list(journal.read())
    assert [r.event_id for r in stored] == ["ev-0", "ev-1", "ev-2", "ev-3"]
    assert [r.payload["i"] for r in stored] == [0, 1, 2, 3]


class FlakySqliteJournal(SqliteJournal):
    """Commits a batch, then reports a failure, ``failures`` times (-1: fails always,
    before writing anything)."""

    failures = 0

    def write_batch(self, conn: sqlite3.Connection, rows: Any) -> None:
        if self.failures < 0:
            raise sqlite3.OperationalError("disk I/O error (injected)")
        super().write_batch(conn, rows)
        if self.failures > 0:
            self.failures -= 1
            raise sqlite3.OperationalError("disk I/O error (injected after the commit)")


@INSERTS
async def test_sqlite_retried_batches_never_double(tmp_path: Path, insert: Insert) -> None:
    _sqlite_journal(tmp_path / "probe.sqlite", insert)
    journal = FlakySqliteJournal(tmp_path / "j.sqlite", insert=insert)
    journal.failures = 2
    await journal.open()
    for i in range(50):
        journal.append(record(i))
    await journal.flush()
    journal.append(record(50))
    await journal.close()
    assert journal.failures == 0
    assert [r.event_id for r in journal.read()] == [f"ev-{i}" for i in range(51)]


@INSERTS
async def test_sqlite_write_failing_past_the_retry_window_fails_the_journal(
    tmp_path: Path, insert: Insert
) -> None:
    _sqlite_journal(tmp_path / "probe.sqlite", insert)
    journal = FlakySqliteJournal(
        tmp_path / "j.sqlite",
        insert=insert,
        retry_for_s=0.2,
    )
    journal.failures = -1
    await journal.open()
    journal.append(record(1))
    with pytest.raises(JournalError, match="journal write failed: disk I/O error"):
        await journal.flush()
    with pytest.raises(JournalError, match="has failed and accepts no records"):
        journal.append(record(2))
    with pytest.raises(JournalError, match="has failed"):
        await journal.close()
    assert journal.count() == 0


async def test_sqlite_open_failure_is_reported(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    journal = SqliteJournal(blocker / "journal.sqlite")
    with pytest.raises(JournalError, match=r"cannot open: .*not-a-dir"):
        await journal.open()
    unopened = SqliteJournal(tmp_path / "j.sqlite")
    unopened.append(record(1))
    with pytest.raises(JournalError, match=r"never opened: call `await journal.open\(\)`"):
        await unopened.flush()


async def test_postgres_unreachable_server_is_reported() -> None:
    journal = PostgresJournal(
        "postgresql://someone:secret@127.0.0.1:1/test", run_id="r", connect_timeout_s=1
    )
    with pytest.raises(JournalError, match="cannot connect to the PostgreSQL journal") as info:
        await journal.open()
    assert "secret" not in str(info.value)
    with pytest.raises(JournalError, match="has failed"):
        journal.append(record(1))


def test_sqlite_plugin_registers_and_builds_in_the_run_folder(tmp_path: Path) -> None:
    registry = PluginRegistry()
    registry.register_module(journal_sqlite, name="journal_sqlite")
    registration = registry.get("journal", "sqlite")
    params = registration.params.model_validate({})
    journal = registration.factory(params, tmp_path)
    assert isinstance(journal, SqliteJournal)
    assert journal.path == tmp_path / "journal.sqlite"
    absolute = registration.factory(SqliteJournalParams(path=str(tmp_path / "x.db")), "/else")
    assert absolute.path == tmp_path / "x.db"
    with pytest.raises(pydantic.ValidationError, match="pth"):
        SqliteJournalParams.model_validate({"pth": "x"})


def test_postgres_plugin_registers_with_its_requirement() -> None:
    registry = PluginRegistry()
    registry.register_module(journal_postgres, name="journal_postgres")
    registration = registry.get("journal", "postgres")
    assert registration.requires == ("psycopg",)
    assert registration.loadable
    params = PostgresJournalParams()
    journal = registration.factory(params, Path("/runs/2024-05-01-mm"))
    assert journal.run_id == "2024-05-01-mm"
    assert journal.table == "quoteforge_journal"
    with pytest.raises(pydantic.ValidationError, match="journal table name 'bad;name'"):
        PostgresJournalParams(table="bad;name")
    with pytest.raises(pydantic.ValidationError, match="extra"):
        PostgresJournalParams.model_validate({"dsn": PG_DSN, "tabel": "x"})
