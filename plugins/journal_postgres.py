"""The shared journal: PostgreSQL via psycopg 3, for runs spread over several nodes.

A writer thread inserts each batch in one transaction, with one ``INSERT ... SELECT FROM
jsonb_array_elements(...)`` per 2000 rows whose parameter is the rows' JSON text (the
encoding the SQLite backend uses too); rows are scoped by ``run_id`` and idempotent by
``(run_id, event_id)``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from quoteforge import hookimpl
from quoteforge.journal import JournalRecord
from quoteforge.plugins.journal_sqlite import ThreadedJournal, json_array
from quoteforge.registry import Register

if TYPE_CHECKING:
    import psycopg

__all__ = [
    "PostgresJournal",
    "PostgresJournalParams",
    "factory",
    "quoteforge_register_journal_backends",
]

_TABLE_RE = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_RUN_ID_RE = re.compile(r"[A-Za-z0-9_.:-]{1,200}")
DEFAULT_DSN = "postgresql://127.0.0.1:5432/test"
_ROWS_PER_STATEMENT = 2000


def _check_table(table: str) -> str:
    if not _TABLE_RE.fullmatch(table):
        raise ValueError(
            f"journal table name {table!r} is invalid: use 1-63 characters of a-z, 0-9 and _ "
            "starting with a letter or _"
        )
    return table


def _check_run_id(run_id: str) -> str:
    if not _RUN_ID_RE.fullmatch(run_id):
        raise ValueError(
            f"journal run_id {run_id!r} is invalid: use 1-200 characters of "
            "A-Z, a-z, 0-9 and _ . : -"
        )
    return run_id


class PostgresJournal(ThreadedJournal["psycopg.Connection[Any]"]):
    """The journal in one PostgreSQL table shared by runs, each scoped by ``run_id``.

    Commits use the server's ``synchronous_commit`` (on by default: a committed batch
    survives a server crash). ``read()`` returns this run's records in append order.
    """

    def __init__(
        self,
        dsn: str = DEFAULT_DSN,
        *,
        run_id: str,
        table: str = "quoteforge_journal",
        batch_max: int = 5000,
        retry_for_s: float = 30.0,
        connect_timeout_s: int = 5,
        statement_timeout_s: float = 10.0,
    ) -> None:
        super().__init__(batch_max=batch_max, retry_for_s=retry_for_s)
        self.dsn = dsn
        self.run_id = _check_run_id(run_id)
        self.table = _check_table(table)
        self.connect_timeout_s = connect_timeout_s
        self.statement_timeout_s = statement_timeout_s

    @property
    def name(self) -> str:
        return f"postgres journal {self.table}/{self.run_id}"

    def _open_connection(self, *, bounded: bool = False) -> psycopg.Connection[Any]:
        """A connection; ``bounded`` (schema and writer) also gives up on a statement
        after ``statement_timeout_s`` and on a silent peer (TCP keepalives, user
        timeout): a blocked table or a network partition then fails the write, to be
        retried and, past ``retry_for_s``, to fail the journal, instead of hanging
        ``flush()`` and the run's stop forever. Settings in the dsn win."""
        import psycopg
        from psycopg.conninfo import conninfo_to_dict

        if _TWO_ATS.match(self.dsn):  # libpq would take what follows the first @ for the host
            raise psycopg.ProgrammingError(
                "the PostgreSQL journal's dsn holds an @ in its user or password (details "
                "withheld: the dsn holds a password): percent-encode it there as %40"
            )
        malformed: psycopg.Error | None = None
        try:
            given = conninfo_to_dict(self.dsn)
        except psycopg.Error as exc:
            malformed = exc
        if malformed is not None:  # raised outside the handler: no chained context
            # libpq quotes the token it choked on, which can be a piece of the password.
            secret = "password" in self.dsn.lower() or _redact(self.dsn) != self.dsn
            why = "details withheld: the dsn holds a password" if secret else str(malformed)
            raise psycopg.ProgrammingError(
                f"the PostgreSQL journal's dsn is malformed ({why}): write it as "
                "postgresql://USER:${PASSWORD_VAR}@HOST:PORT/DATABASE or as libpq "
                "key=value pairs (quote a value holding spaces: password='...')"
            ) from (None if secret else malformed)
        options: dict[str, Any] = {
            "connect_timeout": self.connect_timeout_s,
            "application_name": "quoteforge",
        }
        timeout_ms = max(1, int(self.statement_timeout_s * 1000))
        if bounded:
            keepalives = {
                "keepalives": 1,
                "keepalives_idle": 5,
                "keepalives_interval": 2,
                "keepalives_count": 3,
                "tcp_user_timeout": timeout_ms,
            }
            options.update((k, v) for k, v in keepalives.items() if k not in given)
        try:
            conn = psycopg.connect(self.dsn, **options)
        except psycopg.OperationalError as exc:
            raise psycopg.OperationalError(
                f"cannot connect to the PostgreSQL journal ({_redact(self.dsn)}): "
                f"{str(exc).strip()}; check that the server runs and the dsn is right"
            ) from exc
        if bounded:
            # Session-wide; committed so that the writer's transactions are top-level.
            conn.execute("SELECT set_config('statement_timeout', %s, false)", (str(timeout_ms),))
            conn.commit()
        return conn

    def prepare_storage(self) -> None:
        from psycopg import sql

        table = sql.Identifier(self.table)
        with self._open_connection(bounded=True) as conn:
            # Several nodes may create the table at once: serialise on an advisory lock.
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (self.table,))
            conn.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {} ("
                    " seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
                    " run_id text NOT NULL,"
                    " event_id text NOT NULL,"
                    " kind text NOT NULL,"
                    " ts_ns bigint NOT NULL,"
                    " market text NOT NULL,"
                    " payload jsonb NOT NULL,"
                    " UNIQUE (run_id, event_id))"
                ).format(table)
            )
            conn.execute(
                sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (run_id, seq)").format(
                    sql.Identifier(f"{self.table}_run_seq"), table
                )
            )

    def connect_writer(self) -> psycopg.Connection[Any]:
        from psycopg import sql

        conn = self._open_connection(bounded=True)
        # One statement per chunk: a JSON array of encode_row texts in, rows out in array
        # order (WITH ORDINALITY), so the identity column follows append order; the
        # payload arrives as a JSON string holding encode_payload's text. ON CONFLICT DO
        # NOTHING also drops a repeated id within the same statement.
        self._insert = sql.SQL(
            "INSERT INTO {} (run_id, event_id, kind, ts_ns, market, payload) "
            "SELECT %s, e->>0, e->>1, (e->>2)::bigint, e->>3, (e->>4)::jsonb "
            "FROM jsonb_array_elements(%s::jsonb) WITH ORDINALITY AS r(e, n) ORDER BY n "
            "ON CONFLICT (run_id, event_id) DO NOTHING"
        ).format(sql.Identifier(self.table))
        return conn

    def write_batch(self, conn: psycopg.Connection[Any], rows: Sequence[str]) -> None:
        # Rows are encode_row texts (ThreadedJournal's encoder): the writer thread only
        # joins strings, so it holds the GIL for microseconds, not for adapting
        # thousands of parameters.
        with conn.transaction():
            for start in range(0, len(rows), _ROWS_PER_STATEMENT):
                chunk = rows[start : start + _ROWS_PER_STATEMENT]
                conn.execute(self._insert, (self.run_id, json_array(chunk)))

    def disconnect_writer(self, conn: psycopg.Connection[Any]) -> None:
        conn.close()

    def read(self, kinds: tuple[str, ...] | None = None) -> Iterator[JournalRecord]:
        """This run's committed records in append order (one new connection per call)."""
        return self._read(kinds)

    def _read(self, kinds: tuple[str, ...] | None) -> Iterator[JournalRecord]:
        from psycopg import sql

        query = sql.SQL(
            "SELECT event_id, kind, ts_ns, market, payload::text FROM {} WHERE run_id = %s"
        ).format(sql.Identifier(self.table))
        args: list[Any] = [self.run_id]
        if kinds:
            query += sql.SQL(" AND kind = ANY(%s)")
            args.append(list(kinds))
        query += sql.SQL(" ORDER BY seq")
        with self._open_connection() as conn:
            if not _table_exists(conn, self.table):
                return
            # A named (server-side) cursor streams a long journal instead of loading it.
            with conn.cursor(name="quoteforge_journal_read") as cursor:
                cursor.execute(query, args)
                while True:
                    batch = cursor.fetchmany(2000)
                    if not batch:
                        return
                    for event_id, kind, ts_ns, market, payload in batch:
                        yield JournalRecord(event_id, kind, ts_ns, market, json.loads(payload))

    def count(self) -> int:
        from psycopg import sql

        with self._open_connection() as conn:
            if not _table_exists(conn, self.table):
                return 0
            row = conn.execute(
                sql.SQL("SELECT count(*) FROM {} WHERE run_id = %s").format(
                    sql.Identifier(self.table)
                ),
                (self.run_id,),
            ).fetchone()
            return int(row[0]) if row else 0

    def drop_run(self) -> None:
        """Delete this run's records (tests, re-running a backtest under the same id)."""
        from psycopg import sql

        with self._open_connection() as conn:
            if _table_exists(conn, self.table):
                conn.execute(
                    sql.SQL("DELETE FROM {} WHERE run_id = %s").format(sql.Identifier(self.table)),
                    (self.run_id,),
                )


def _table_exists(conn: psycopg.Connection[Any], table: str) -> bool:
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()
    return bool(row and row[0])


#: A URI dsn whose user or password part holds an unencoded @.
_TWO_ATS = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/?#@]*@[^/?#]*@")


def _redact(dsn: str) -> str:
    """The dsn without its password (to its last @: one may be in it), for error messages."""
    dsn = re.sub(r"(://[^:/@]*:).*@", r"\1***@", dsn)
    # key=value form (a quoted value may hold spaces and \' escapes) or a URI query.
    return re.sub(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'?|[^\s&]+)", r"\1***", dsn)


# ---------------------------------------------------------------------------------------
# Plugin registration
# ---------------------------------------------------------------------------------------


class PostgresJournalParams(BaseModel):
    """Parameters of the ``postgres`` journal backend."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    dsn: str = Field(
        default=DEFAULT_DSN,
        description="libpq connection string or URI; put secrets in ${ENV} variables.",
    )
    table: str = Field(
        default="quoteforge_journal",
        description="Table holding the journal; created when missing.",
    )
    run_id: str | None = Field(
        default=None,
        description="Scope of this run's records in the table; default: the run folder name.",
    )
    batch_max: int = Field(
        default=5000, ge=1, le=100_000, description="Most records written in one transaction."
    )

    @field_validator("table")
    @classmethod
    def _valid_table(cls, value: str) -> str:
        return _check_table(value)

    @field_validator("run_id")
    @classmethod
    def _valid_run_id(cls, value: str | None) -> str | None:
        return None if value is None else _check_run_id(value)


def factory(params: PostgresJournalParams, run_dir: str | Path) -> PostgresJournal:
    run_id = params.run_id or Path(run_dir).name
    return PostgresJournal(
        params.dsn, run_id=run_id, table=params.table, batch_max=params.batch_max
    )


@hookimpl
def quoteforge_register_journal_backends(register: Register) -> None:
    register(
        "postgres",
        factory,
        params=PostgresJournalParams,
        description="PostgreSQL table shared by several nodes, scoped by run id.",
        requires=("psycopg",),
    )
