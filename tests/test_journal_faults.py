"""The journals under the faults a live bot meets: a PostgreSQL server that stops
answering or goes away and comes back, secrets in a dsn, two runs on one journal, and a
damaged journal file. Each test asserts what reaches the operator (records, errors,
exit codes), not how the backend gets there."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import quoteforge
from quoteforge.engine import Run
from quoteforge.exchanges.testing.binance_replica import BinanceReplica
from quoteforge.exchanges.testing.conformance import FAST_PARAMS
from quoteforge.journal import JournalRecord
from quoteforge.manifest import load_manifest
from quoteforge.plugins import journal_sqlite
from quoteforge.plugins.journal_postgres import PostgresJournal
from quoteforge.plugins.journal_sqlite import JournalError, SqliteJournal
from quoteforge.registry import PluginRegistry

PG_TABLE = "quoteforge_journal_faults"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def throwaway_db(pg_dsn: str) -> Iterator[str]:
    """A database of the test's own, so that it can be closed to connections."""
    import psycopg
    from psycopg.conninfo import make_conninfo

    name = f"qf_fault_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield make_conninfo(pg_dsn, dbname=name)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def admin(pg_dsn: str, *statements: str) -> None:
    import psycopg

    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


def close_database(pg_dsn: str, dsn: str) -> None:
    """The server refuses new connections to ``dsn``'s database and drops its open ones."""
    name = database(dsn)
    admin(
        pg_dsn,
        f"ALTER DATABASE {name} ALLOW_CONNECTIONS false",
        f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'",
    )


def reopen_database(pg_dsn: str, dsn: str) -> None:
    admin(pg_dsn, f"ALTER DATABASE {database(dsn)} ALLOW_CONNECTIONS true")


def database(dsn: str) -> str:
    from psycopg.conninfo import conninfo_to_dict

    return str(conninfo_to_dict(dsn)["dbname"])


def record(i: int) -> JournalRecord:
    return JournalRecord(f"ev-{i}", "fill", 1_700_000_000_000_000_000 + i, "sim:X", {"i": i})


def messages(exc: BaseException | None) -> str:
    """The text of an error and of every error chained to it (what a traceback shows)."""
    texts = []
    while exc is not None:
        texts.append(f"{type(exc).__name__}: {exc}")
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    return "\n".join(texts)


# ---------------------------------------------------------------------------------------
# PostgreSQL: a server that goes away, comes back, or stops answering
# ---------------------------------------------------------------------------------------


async def test_postgres_records_survive_a_server_outage_within_the_retry_window(
    pg_dsn: str, throwaway_db: str
) -> None:
    journal = PostgresJournal(throwaway_db, run_id="outage", table=PG_TABLE, retry_for_s=20)
    await journal.open()
    for i in range(10):
        journal.append(record(i))
    await journal.flush()
    close_database(pg_dsn, throwaway_db)
    for i in range(10, 20):
        journal.append(record(i))  # the writer finds the server gone and retries
    await asyncio.sleep(0.5)
    reopen_database(pg_dsn, throwaway_db)
    await journal.close()
    assert [r.event_id for r in journal.read()] == [f"ev-{i}" for i in range(20)]


async def test_postgres_outage_past_the_retry_window_says_what_is_wrong(
    pg_dsn: str, throwaway_db: str
) -> None:
    dsn = f"{throwaway_db} password=hunter22"
    journal = PostgresJournal(dsn, run_id="gone", table=PG_TABLE, retry_for_s=1)
    await journal.open()
    journal.append(record(0))
    await journal.flush()
    close_database(pg_dsn, throwaway_db)
    journal.append(record(1))
    with pytest.raises(JournalError) as info:
        await journal.flush()
    text = str(info.value)
    # The cause, not "the connection is lost"; what to check; what the run must do.
    assert "is not currently accepting connections" in text, text
    assert "check that the server runs and the dsn is right" in text
    assert "retried for 1 s" in text and "stop trading" in text
    assert "hunter22" not in messages(info.value)
    with pytest.raises(JournalError, match="has failed and accepts no records: cannot connect"):
        journal.append(record(2))
    reopen_database(pg_dsn, throwaway_db)
    assert [r.event_id for r in journal.read()] == ["ev-0"]  # what was flushed stays


async def test_postgres_server_that_stops_answering_fails_the_journal_instead_of_hanging(
    pg_dsn: str,
) -> None:
    """A table locked by someone else (as a hung server or a network partition looks
    to the writer) must fail the journal after the retry window, not block flush() and
    the run's stop forever."""
    import psycopg
    from psycopg import sql

    run_id = f"stuck-{uuid.uuid4().hex[:8]}"
    journal = PostgresJournal(
        pg_dsn, run_id=run_id, table=PG_TABLE, retry_for_s=1, statement_timeout_s=0.5
    )
    await journal.open()
    try:
        with psycopg.connect(pg_dsn) as blocker:
            blocker.execute(
                sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(sql.Identifier(PG_TABLE))
            )
            journal.append(record(1))
            # The guard only turns a hang into a failure; the journal gives up in ~1.5 s.
            with pytest.raises(JournalError, match=r"statement timeout.*stop trading"):
                await asyncio.wait_for(journal.flush(), 60)
            blocker.rollback()
    finally:
        journal.drop_run()


async def test_postgres_brief_stall_is_retried_and_loses_nothing(pg_dsn: str) -> None:
    import psycopg
    from psycopg import sql

    run_id = f"stall-{uuid.uuid4().hex[:8]}"
    journal = PostgresJournal(
        pg_dsn, run_id=run_id, table=PG_TABLE, retry_for_s=30, statement_timeout_s=0.3
    )
    await journal.open()
    try:
        blocker = psycopg.connect(pg_dsn)
        blocker.execute(
            sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(sql.Identifier(PG_TABLE))
        )
        threading.Timer(1.0, blocker.close).start()  # the stall ends on its own
        for i in range(5):
            journal.append(record(i))
        await asyncio.wait_for(journal.flush(), 60)
        await journal.close()
        assert journal.count() == 5
    finally:
        journal.drop_run()


# ---------------------------------------------------------------------------------------
# Secrets in the dsn
# ---------------------------------------------------------------------------------------

SECRET_DSNS = [
    ("postgresql://qf:s3cr3t-pw@127.0.0.1:5432/no_such_db", ["s3cr3t-pw"]),
    # An unencoded @ in the password: libpq would look the rest up as the host name.
    ("postgresql://qf:s3cr3t@pw-9z9z@127.0.0.1:5432/no_such_db", ["s3cr3t", "pw-9z9z"]),
    ("host=127.0.0.1 dbname=no_such_db user=qf password='s3cr3t pw'", ["s3cr3t", "pw'"]),
    ("host=127.0.0.1 dbname=no_such_db password=s3cr3t extra-word", ["extra-word"]),
]


@pytest.mark.parametrize(("dsn", "pieces"), SECRET_DSNS)
async def test_postgres_dsn_password_never_appears_in_errors(
    pg_dsn: str, dsn: str, pieces: list[str]
) -> None:
    journal = PostgresJournal(dsn, run_id="r", table=PG_TABLE, connect_timeout_s=2)
    with pytest.raises(JournalError) as info:
        await journal.open()
    text = messages(info.value)
    assert "PostgreSQL journal" in text and "dsn" in text
    for piece in pieces:
        assert piece not in text


def test_postgres_dsn_password_never_reaches_the_log_or_run_folder(
    pg_dsn: str, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    dsn = "host=127.0.0.1 dbname=no_such_db password='open sesame'"
    done = subprocess.run(
        [
            *(
                sys.executable,
                "-m",
                "quoteforge.cli",
                "run",
                str(ROOT / "examples/quickstart.yaml"),
            ),
            *("--set", "run.duration=5s", "--set", "journal.type=postgres"),
            *("--set", "journal.params.dsn=${QF_TEST_DSN}", "--out", str(run_dir)),
            *("--quiet", "--json-log", "--log-level", "DEBUG"),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "QF_TEST_DSN": dsn},
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    assert "cannot connect to the PostgreSQL journal" in done.stderr
    assert "password=***" in done.stderr
    written = "".join(p.read_text(errors="replace") for p in run_dir.rglob("*") if p.is_file())
    for piece in ("open sesame", "sesame"):
        assert piece not in done.stderr + done.stdout + written


# ---------------------------------------------------------------------------------------
# SQLite: two writers on one file, a damaged file
# ---------------------------------------------------------------------------------------


async def test_a_second_writer_on_one_sqlite_journal_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "shared" / "journal.sqlite"
    first = SqliteJournal(path)
    await first.open()
    first.append(record(1))
    await first.flush()
    second = SqliteJournal(path)
    with pytest.raises(
        JournalError, match=rf"being written by another process \(pid {os.getpid()}\)"
    ):
        await second.open()
    first.append(record(2))
    await first.close()
    assert [r.event_id for r in SqliteJournal(path).read()] == ["ev-1", "ev-2"]
    third = SqliteJournal(path)
    await third.open()  # the first has finished: the file is free again
    third.append(record(3))
    await third.close()
    assert third.count() == 3


def test_two_runs_on_one_sqlite_journal_do_not_merge(tmp_path: Path) -> None:
    """Two simulated runs with the same seed make the same event ids: on one journal
    the second's records would be dropped as duplicates of the first's."""
    journal = tmp_path / "shared.sqlite"
    cmd = [sys.executable, "-m", "quoteforge.cli", "run", str(ROOT / "examples/quickstart.yaml")]
    cmd += ["--set", f"journal.params.path={journal}", "--quiet"]
    first = subprocess.Popen(
        [*cmd, "--set", "run.duration=60m", "--out", str(tmp_path / "one")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lock = journal.with_name(journal.name + ".lock")
        for _ in range(600):  # the first run has its journal open
            if lock.exists() and lock.read_text().strip() == str(first.pid):
                break
            if first.poll() is not None:
                pytest.fail(f"the first run ended early: {first.communicate()[1]}")
            threading.Event().wait(0.05)
        second = subprocess.run(
            [*cmd, "--set", "run.duration=5s", "--out", str(tmp_path / "two")],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        first.kill()
        first.wait()
    assert second.returncode == 1
    assert f"is being written by another process (pid {first.pid})" in second.stderr
    assert "run-start-two" not in {r.event_id for r in SqliteJournal(journal).read()}


@pytest.fixture
def damaged_run(tmp_path: Path) -> Path:
    """A finished quickstart run folder whose journal is then damaged in the middle."""
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "quoteforge.cli", "run", str(ROOT / "examples/quickstart.yaml")]
    done = subprocess.run(
        [*cmd, "--set", "run.duration=30s", "--out", str(run_dir), "--quiet"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    with (run_dir / "journal.sqlite").open("r+b") as fh:
        fh.seek(4096 * 3)
        fh.write(b"\xa5" * 8192)
    return run_dir


def test_a_damaged_sqlite_journal_names_the_file_and_the_way_out(damaged_run: Path) -> None:
    path = damaged_run / "journal.sqlite"
    with pytest.raises(JournalError, match=rf"journal {path} is damaged .*\.recover"):
        list(SqliteJournal(path).read())
    # What a resume of that folder tells the operator.
    run = damaged_run / "run.json"
    run.write_text(run.read_text().replace('"finished_at"', '"was_finished_at"'))
    done = subprocess.run(
        [sys.executable, "-m", "quoteforge.cli", "run", "--resume", str(damaged_run), "--quiet"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert f"journal {path} is damaged (database disk image is malformed)" in done.stderr


async def test_a_truncated_sqlite_journal_is_refused_at_open(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    journal = SqliteJournal(path)
    await journal.open()
    for i in range(3000):
        journal.append(record(i))
    await journal.close()
    with path.open("r+b") as fh:
        fh.truncate(path.stat().st_size // 2)
    with pytest.raises(JournalError, match=rf"cannot open: journal {path} is damaged"):
        await SqliteJournal(path).open()
    await SqliteJournal(path).close()  # never opened: nothing to release
    # The lock is released when opening fails: a repaired file can be opened here.
    path.unlink()
    (tmp_path / "journal.sqlite-wal").unlink(missing_ok=True)
    (tmp_path / "journal.sqlite-shm").unlink(missing_ok=True)
    again = SqliteJournal(path)
    await again.open()
    await again.close()


EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


# -- the run when its journal fails ------------------------------------------------------


class DiskFillsUp(journal_sqlite.SqliteJournal):
    """The SQLite journal on a disk that fills up after ``good`` batches, or (with
    ``at_orders``) at the first batch that holds an order record: a quiet run may write
    nothing more once its quotes stand, and its journal must fail while it runs."""

    good = 3
    at_orders = False

    def write_batch(self, conn: sqlite3.Connection, rows: Any) -> None:
        if self.batches >= self.good or (self.at_orders and any(r[1] == "order" for r in rows)):
            raise sqlite3.OperationalError("database or disk is full")
        super().write_batch(conn, rows)


def _disk_fills_up(params: Any, run_dir: str | Path) -> DiskFillsUp:
    journal = DiskFillsUp(Path(run_dir) / "journal.sqlite")
    journal.retry_for_s = 0.2
    return journal


class _FullDiskPlugin:
    @staticmethod
    @quoteforge.hookimpl
    def quoteforge_register_journal_backends(register: Any) -> None:
        register("full_disk", _disk_fills_up, params=journal_sqlite.SqliteJournalParams)


@pytest.mark.parametrize("stopped_by", ["its end", "the kill switch", "the failure"])
def test_a_failed_journal_still_lets_every_order_be_cancelled(
    stopped_by: str, registry: PluginRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A live run on the Binance replica whose journal's disk fills up: cancels and the
    kill switch journal what they do, and used to raise before any cancel went out,
    leaving the quotes resting at the venue."""
    if "full_disk" not in registry.types("journal"):
        registry.register_module(_FullDiskPlugin, "test_journal_full_disk")
    # The failure itself must come while the run goes on, whatever its timing.
    monkeypatch.setattr(DiskFillsUp, "at_orders", stopped_by == "the failure")

    async def scenario() -> BinanceReplica:
        replica = BinanceReplica(ping_interval=0.1)
        await replica.start()
        monkeypatch.setenv("BINANCE_API_KEY", replica.api_key)
        monkeypatch.setenv("BINANCE_API_SECRET", replica.api_secret)
        urls = {**FAST_PARAMS, "rest_url": replica.url, "ws_url": replica.ws_url}
        sets = [f"exchanges.binance.params.{k}={v}" for k, v in urls.items()]
        sets += ["exchanges.binance.params.testnet=false", "journal.type=full_disk"]
        duration = "60s" if stopped_by == "the failure" else "5s"
        sets += [f"run.duration={duration}", "run.cancel_timeout=5s", "report.html=false"]
        run = Run(load_manifest(EXAMPLES / "binance_testnet.yaml", registry, overrides=sets),
                  registry, run_dir=tmp_path / "run")  # fmt: skip
        task = asyncio.create_task(run.run())
        try:
            while not replica.orders("BTCUSDT") and not task.done():
                await asyncio.sleep(0.05)
            if stopped_by == "the kill switch":
                await asyncio.sleep(1.5)  # the journal has failed by now
                run.kill("operator")
            with contextlib.suppress(JournalError):
                await asyncio.wait_for(task, 30)  # a 60 s run stops on its own failure
            assert replica.orders("BTCUSDT", open_only=False), "it quoted"
            if stopped_by == "the failure":
                assert "kill switch: the journal failed" in run.stop_reason
        finally:
            await replica.stop()
        return replica

    replica = asyncio.run(scenario())
    assert replica.orders("BTCUSDT") == [], "orders left resting at the venue"
