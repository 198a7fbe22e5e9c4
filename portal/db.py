"""The database schema (SQLAlchemy Core) and the engine, for SQLite and PostgreSQL alike.

The schema is defined once here (the vault's own tables in portal/vault/tables.py);
Alembic migrations in portal/migrations create it (`portal.migrations.upgrade`). Ids are
random URL-safe strings made by `new_id`, so they can be shown in URLs without leaking counts.
Times are timezone-aware UTC datetimes.
"""

from __future__ import annotations

import secrets
import string
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    event,
)
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.types import TypeDecorator

from portal.idle_ping import IdlePing
from portal.write_gate import WriteGate

metadata = MetaData()


_ID_ALPHABET = string.ascii_letters + string.digits


def new_id(length: int = 16) -> str:
    """A random id of letters and digits (16 of them: about 95 bits).

    No `-` or `_`: an id starting with `-` would be taken for an option by the command line
    (`megamovie videos delete ID`) and by ffmpeg if it ever reached an argument list."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(length))


def is_id(value: str) -> bool:
    """Could `value` be an id `new_id` made (or an older, longer one)? Ids arrive in URLs:
    anything else is not found without asking the database."""
    return 0 < len(value) <= 32 and value.isascii() and value.isalnum()


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to the database; use portal.db.utcnow()")
        return value

    def process_result_value(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


users = Table(
    "users",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("email", String(320), nullable=False, unique=True),
    Column("display_name", String(100), nullable=False),
    Column("password_hash", String(200), nullable=False),
    Column("role", String(16), nullable=False),  # viewer | creator | admin
    Column("created_at", UTCDateTime(), nullable=False),
)

sessions = Table(
    "sessions",
    metadata,
    Column("id", String(64), primary_key=True),  # sha256 of the cookie's random token
    Column("user_id", String(32), ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("csrf_token", String(64), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("expires_at", UTCDateTime(), nullable=False),
)

api_tokens = Table(
    "api_tokens",
    metadata,
    Column("id", String(64), primary_key=True),  # sha256 of the bearer token
    Column("user_id", String(32), ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("expires_at", UTCDateTime(), nullable=False),
)

videos = Table(
    "videos",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("creator_id", String(32), ForeignKey("users.id"), nullable=False, index=True),
    Column("title", String(200), nullable=False),
    Column("description", Text, nullable=False, default=""),
    Column("tags", String(500), nullable=False, default=""),  # space separated, lower case
    # uploading | queued | processing | ready | failed
    Column("status", String(16), nullable=False, index=True),
    Column("progress", Float, nullable=False, default=0.0),
    Column("error", Text, nullable=True),
    Column("duration", Float, nullable=True),
    Column("width", Integer, nullable=True),
    Column("height", Integer, nullable=True),
    Column("has_poster", Boolean, nullable=False, default=False),
    Column("has_storyboard", Boolean, nullable=False, default=False),
    Column("playable", Boolean, nullable=False, default=False),  # first segments are in
    Column("source_filename", String(255), nullable=False, default=""),
    Column("source_size", BigInteger, nullable=False, default=0),
    Column("stored_bytes", BigInteger, nullable=False, default=0),
    Column("views", BigInteger, nullable=False, default=0),
    Column("created_at", UTCDateTime(), nullable=False, index=True),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("ready_at", UTCDateTime(), nullable=True),
    # Paid films play their first `preview_seconds` for everyone; free films ignore it.
    Column("preview_seconds", Integer, nullable=False, default=120, server_default="120"),
    # The catalog walks these in the order it shows (portal/catalog.py), one page at a time,
    # instead of sorting every public film; their key is also the paging cursor.
    Index("ix_videos_newest", "ready_at", "id"),
    Index("ix_videos_popular", "views", "ready_at", "id"),
)

uploads = Table(
    "uploads",
    metadata,
    Column("id", String(32), primary_key=True),
    # None for a partial upload (tus concatenation): its bytes wait under its own data key
    # (vault owner = the upload's id) until a final upload gathers them into a film.
    Column("video_id", String(32), ForeignKey("videos.id", ondelete="CASCADE"), nullable=True),
    Column("creator_id", String(32), ForeignKey("users.id"), nullable=False, index=True),
    Column("length", BigInteger, nullable=False),
    Column("offset", BigInteger, nullable=False, default=0),
    Column("parts", Integer, nullable=False, default=0),  # sealed vault objects so far
    Column("metadata", Text, nullable=False, default="{}"),  # JSON of Upload-Metadata
    Column("created_at", UTCDateTime(), nullable=False),
    Column("expires_at", UTCDateTime(), nullable=False, index=True),
    Column("completed_at", UTCDateTime(), nullable=True),
    # tus concatenation: None, "partial", or "final;<partial id> <partial id> ...".
    Column("concat", Text, nullable=True),
)

renditions = Table(
    "renditions",
    metadata,
    Column("video_id", String(32), ForeignKey("videos.id", ondelete="CASCADE"), primary_key=True),
    Column("name", String(16), primary_key=True),
    Column("width", Integer, nullable=False),
    Column("height", Integer, nullable=False),
    Column("fps", Float, nullable=False),
    Column("bandwidth", Integer, nullable=False),
    Column("average_bandwidth", Integer, nullable=False),
    Column("codecs", String(100), nullable=False),
    Column("position", Integer, nullable=False),  # order in the master playlist
)

segments = Table(
    "segments",
    metadata,
    Column("video_id", String(32), ForeignKey("videos.id", ondelete="CASCADE"), primary_key=True),
    Column("rendition", String(16), primary_key=True),
    Column("idx", Integer, primary_key=True),  # -1 is the init segment
    Column("duration", Float, nullable=False),
    Column("size", BigInteger, nullable=False),
)

jobs = Table(
    "jobs",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("video_id", String(32), ForeignKey("videos.id", ondelete="CASCADE"), nullable=False),
    Column("kind", String(32), nullable=False),  # transcode
    Column("state", String(16), nullable=False),  # queued | running | done | failed
    Column("attempts", Integer, nullable=False, default=0),
    Column("max_attempts", Integer, nullable=False, default=3),
    Column("run_after", UTCDateTime(), nullable=False),
    Column("lease_owner", String(64), nullable=True),
    Column("lease_expires_at", UTCDateTime(), nullable=True),
    Column("last_error", Text, nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Index("ix_jobs_claim", "state", "run_after"),
)

watch_progress = Table(
    "watch_progress",
    metadata,
    Column("user_id", String(32), ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    Column("video_id", String(32), ForeignKey("videos.id", ondelete="CASCADE"), primary_key=True),
    Column("position", Float, nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
)

# The last counted view of a video per viewer: a grant counts a view only when this row is
# missing or older than a day, so renewed grants and reloads do not inflate `videos.views`.
# The viewer key is "u:<user id>", or "a:<HMAC of the client address>" (no raw IP is kept).
views = Table(
    "views",
    metadata,
    Column("viewer_key", String(80), primary_key=True),
    Column("video_id", String(32), ForeignKey("videos.id", ondelete="CASCADE"), primary_key=True),
    Column("counted_at", UTCDateTime(), nullable=False),
)

# -- licensing: what a film costs and who holds a licence ------------------------------------

# A paid film's offers (no rows: the film is free). kind: buy | rent | channel | pass. buy and
# rent carry a price; channel (the creator's subscription) and pass (the platform pass) are
# priced by `channel_plans` and the pass setting.
offers = Table(
    "offers",
    metadata,
    Column("id", String(32), primary_key=True),
    Column(
        "video_id",
        String(32),
        ForeignKey("videos.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    Column("kind", String(16), nullable=False),
    Column("amount", BigInteger, nullable=True),  # minor units; NULL for channel and pass
    Column("currency", String(3), nullable=True),  # ISO 4217
    Column("created_at", UTCDateTime(), nullable=False),
)

# The monthly price of a creator's channel subscription.
channel_plans = Table(
    "channel_plans",
    metadata,
    Column("creator_id", String(32), ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    Column("amount", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
)

# A bought or rented film. A rental must start within 30 days (`expires_at` until then) and
# runs 48 h from `first_played_at` (then `expires_at` moves to its end). Refunded purchases
# keep their row with `refunded_at` set and grant nothing.
purchases = Table(
    "purchases",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("user_id", String(32), ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("video_id", String(32), ForeignKey("videos.id", ondelete="SET NULL"), nullable=True),
    Column("creator_id", String(32), ForeignKey("users.id"), nullable=False),
    Column("offer_id", String(32), nullable=True),  # offers may be changed after the sale
    Column("kind", String(16), nullable=False),  # buy | rent
    Column("amount", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("first_played_at", UTCDateTime(), nullable=True),
    Column("expires_at", UTCDateTime(), nullable=True),  # NULL: forever (buy)
    Column("refunded_at", UTCDateTime(), nullable=True),
    Column("transaction_id", String(32), nullable=False),  # its ledger transaction
    Index("ix_purchases_user_video", "user_id", "video_id"),
)

# A paid period of a subscription: plan "pass" (the platform pass, creator_id NULL) or
# "channel" (one creator's films). Each month's charge is a row of its own.
subscriptions = Table(
    "subscriptions",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("user_id", String(32), ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("plan", String(16), nullable=False),
    Column("creator_id", String(32), ForeignKey("users.id"), nullable=True),
    Column("amount", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("starts_at", UTCDateTime(), nullable=False),
    Column("ends_at", UTCDateTime(), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("refunded_at", UTCDateTime(), nullable=True),
    Column("allocated_at", UTCDateTime(), nullable=True),  # pass: fee split among creators
    Column("transaction_id", String(32), nullable=False),
    Index("ix_subscriptions_user", "user_id", "plan", "ends_at"),
)

# Streams a viewer has open: a grant starts one, renewals keep `seen_at` fresh; a stream not
# seen for a while is over. Limits concurrent streams per viewer across processes.
streams = Table(
    "streams",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("viewer_key", String(80), nullable=False, index=True),
    Column("video_id", String(32), ForeignKey("videos.id", ondelete="CASCADE"), nullable=False),
    Column("started_at", UTCDateTime(), nullable=False),
    Column("seen_at", UTCDateTime(), nullable=False),
)

# Metering: one row per distinct moment of a film delivered under a grant (segment index of
# any rendition), so replays, retries and renditions never count twice. Written in batches.
watched_segments = Table(
    "watched_segments",
    metadata,
    Column("grant_id", String(32), primary_key=True),
    Column("idx", Integer, primary_key=True),
    Column("user_id", String(32), nullable=True, index=True),  # NULL: anonymous
    Column("video_id", String(32), nullable=False, index=True),
    Column("creator_id", String(32), nullable=False, index=True),
    Column("seconds", Float, nullable=False),
    Column("watched_at", UTCDateTime(), nullable=False, index=True),
    # Why the viewer could watch (the licence's source: free, purchase, pass, ...): a Mega
    # Movie Pass fee is shared only among films its subscriber watched under the pass.
    Column("licence", String(32), nullable=False, server_default=""),
)

# -- money: a double-entry ledger, and the statements creators are paid by --------------------

# One posting: a set of entries that sum to zero per currency. (idempotency_scope,
# idempotency_key) is unique, so a retried request finds the first posting instead of making
# a second one; the database enforces it, also between processes. No foreign keys to users:
# the books outlive the accounts they mention.
ledger_transactions = Table(
    "ledger_transactions",
    metadata,
    Column("id", String(32), primary_key=True),
    # top_up | purchase | refund | subscription | pass_allocation | payout
    Column("kind", String(32), nullable=False),
    Column("idempotency_scope", String(64), nullable=False),
    Column("idempotency_key", String(255), nullable=False),
    Column("user_id", String(32), nullable=True, index=True),  # whose request made it
    Column("reference", String(64), nullable=True, index=True),  # purchase, subscription...
    Column("memo", Text, nullable=False, default=""),
    Column("created_at", UTCDateTime(), nullable=False, index=True),
    UniqueConstraint("idempotency_scope", "idempotency_key", name="uq_ledger_idempotency"),
)

# Signed amounts in minor units: positive is value held by (or owed to) the account.
ledger_entries = Table(
    "ledger_entries",
    metadata,
    Column("transaction_id", String(32), ForeignKey("ledger_transactions.id"), primary_key=True),
    Column("line", Integer, primary_key=True),
    Column("account", String(80), nullable=False),  # wallet:<user>, earnings:<creator>, ...
    Column("currency", String(3), nullable=False),
    Column("amount", BigInteger, nullable=False),
    # The statement that paid this earnings entry out (NULL: not yet paid out).
    Column("statement_id", String(32), nullable=True, index=True),
    Index("ix_ledger_entries_account", "account", "currency"),
)

# Every account's balance, updated in the posting's own transaction. Floors (wallets never
# below zero) are one conditional UPDATE on this row, which also serialises spenders.
ledger_balances = Table(
    "ledger_balances",
    metadata,
    Column("account", String(80), primary_key=True),
    Column("currency", String(3), primary_key=True),
    Column("balance", BigInteger, nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
)

# A top-up paid through a provider the payer finishes with elsewhere (Stripe's PaymentIntent,
# confirmed by the browser): pending until the provider says it succeeded, then credited once
# (`transaction_id`, the ledger posting keyed by the provider's reference). (user_id,
# idempotency_key) makes a retried request answer the first top-up; (provider, reference) finds
# it again from a webhook.
provider_payments = Table(
    "provider_payments",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("user_id", String(32), nullable=False),
    Column("idempotency_key", String(255), nullable=False),
    Column("provider", String(32), nullable=False),
    Column("reference", String(64), nullable=True),  # pi_... once the provider made it
    Column("amount", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("status", String(16), nullable=False),  # pending | succeeded | canceled
    Column("message", Text, nullable=False, default=""),  # the provider's last refusal
    Column("transaction_id", String(32), nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    UniqueConstraint("user_id", "idempotency_key", name="uq_provider_payments_key"),
    UniqueConstraint("provider", "reference", name="uq_provider_payments_reference"),
)

# A creator's payout for a period in one currency: what was paid and what it was for.
statements = Table(
    "statements",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("creator_id", String(32), nullable=False, index=True),
    Column("period", String(7), nullable=False),  # YYYY-MM
    Column("currency", String(3), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("cutoff", UTCDateTime(), nullable=False),  # earnings posted before it are in
    Column("transaction_id", String(32), nullable=False),  # the payout posting
    Column("created_at", UTCDateTime(), nullable=False),
    UniqueConstraint("creator_id", "period", "currency", name="uq_statements_creator_period"),
)

statement_lines = Table(
    "statement_lines",
    metadata,
    Column(
        "statement_id",
        String(32),
        ForeignKey("statements.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("line", Integer, primary_key=True),
    Column("kind", String(32), nullable=False),  # buy | rent | refund | channel | pass
    Column("video_id", String(32), nullable=True),
    Column("title", String(200), nullable=False),  # as it was when the statement was made
    Column("count", Integer, nullable=False),
    Column("amount", BigInteger, nullable=False),
)

# A closed payout period: running it again finds this row and changes nothing.
payout_runs = Table(
    "payout_runs",
    metadata,
    Column("period", String(7), primary_key=True),
    Column("cutoff", UTCDateTime(), nullable=False),
    Column("closed_at", UTCDateTime(), nullable=False),
)


rate_limits = Table(
    "rate_limits",
    metadata,
    Column("bucket", String(200), primary_key=True),
    Column("window_start", BigInteger, primary_key=True),
    Column("hits", Integer, nullable=False),
)


# Full-text search over the catalog (queried in portal/catalog.py): one document per film,
# its title, description, tags and its creator's name, kept in step by triggers. SQLite keeps
# an FTS5 table; PostgreSQL a weighted tsvector column (title A, tags and creator B,
# description D) with a GIN index. Neither is a SQLAlchemy table or column: the schema
# comparison leaves them out (portal.migrations.SEARCH_OBJECTS).
_FTS_INSERT = (
    "INSERT INTO videos_fts(video_id, title, description, tags, creator) "
    "SELECT new.id, new.title, coalesce(new.description, ''), coalesce(new.tags, ''), "
    "(SELECT display_name FROM users WHERE id = new.creator_id); "
)
SQLITE_SEARCH_DDL = [
    "CREATE VIRTUAL TABLE IF NOT EXISTS videos_fts USING fts5(video_id UNINDEXED, title, "
    "description, tags, creator, tokenize='unicode61 remove_diacritics 2')",
    "CREATE TRIGGER IF NOT EXISTS videos_fts_insert AFTER INSERT ON videos BEGIN "
    + _FTS_INSERT
    + "END",
    "CREATE TRIGGER IF NOT EXISTS videos_fts_update "
    "AFTER UPDATE OF title, description, tags, creator_id ON videos BEGIN "
    "DELETE FROM videos_fts WHERE video_id = old.id; "
    "INSERT INTO videos_fts(video_id, title, description, tags, creator) "
    "SELECT new.id, new.title, coalesce(new.description, ''), coalesce(new.tags, ''), "
    "(SELECT display_name FROM users WHERE id = new.creator_id); END",
    "CREATE TRIGGER IF NOT EXISTS videos_fts_delete AFTER DELETE ON videos BEGIN "
    "DELETE FROM videos_fts WHERE video_id = old.id; END",
    "CREATE TRIGGER IF NOT EXISTS users_fts_rename AFTER UPDATE OF display_name ON users BEGIN "
    "UPDATE videos_fts SET creator = new.display_name "
    "WHERE video_id IN (SELECT id FROM videos WHERE creator_id = new.id); END",
]


def _search_vector(row: str) -> str:
    """The weighted tsvector of the videos row `row` (NEW in a trigger, or `videos`)."""
    creator = f"(SELECT display_name FROM users WHERE id = {row}.creator_id)"  # noqa: S608
    return (
        f"setweight(to_tsvector('simple', coalesce({row}.title, '')), 'A') || "
        f"setweight(to_tsvector('simple', coalesce({row}.tags, '')), 'B') || "
        f"setweight(to_tsvector('simple', coalesce({creator}, '')), 'B') || "
        f"setweight(to_tsvector('simple', coalesce({row}.description, '')), 'D')"
    )


POSTGRES_SEARCH_DDL = [
    "ALTER TABLE videos ADD COLUMN IF NOT EXISTS search_vector tsvector",
    "CREATE OR REPLACE FUNCTION videos_search_vector() RETURNS trigger LANGUAGE plpgsql AS "
    f"$$ BEGIN NEW.search_vector := {_search_vector('NEW')}; RETURN NEW; END $$",
    "DROP TRIGGER IF EXISTS videos_search_vector ON videos",
    "CREATE TRIGGER videos_search_vector BEFORE INSERT OR UPDATE OF title, description, tags, "
    "creator_id ON videos FOR EACH ROW EXECUTE FUNCTION videos_search_vector()",
    "CREATE OR REPLACE FUNCTION users_search_rename() RETURNS trigger LANGUAGE plpgsql AS "  # noqa: S608 (constants)
    f"$$ BEGIN UPDATE videos SET search_vector = {_search_vector('videos')} "
    "WHERE creator_id = NEW.id; RETURN NULL; END $$",
    "DROP TRIGGER IF EXISTS users_search_rename ON users",
    "CREATE TRIGGER users_search_rename AFTER UPDATE OF display_name ON users "
    "FOR EACH ROW EXECUTE FUNCTION users_search_rename()",
    f"UPDATE videos SET search_vector = {_search_vector('videos')} WHERE search_vector IS NULL",  # noqa: S608
    "CREATE INDEX IF NOT EXISTS ix_videos_search ON videos USING GIN (search_vector)",
]


def create_search_index(connection: Connection) -> None:
    """The catalog's full-text search structures; idempotent (migrations may call it too)."""
    ddl = SQLITE_SEARCH_DDL if connection.dialect.name == "sqlite" else POSTGRES_SEARCH_DDL
    for statement in ddl:
        connection.exec_driver_sql(statement)


def drop_search_index(connection: Connection) -> None:
    if connection.dialect.name == "sqlite":
        connection.exec_driver_sql("DROP TABLE IF EXISTS videos_fts")
        return
    for statement in (
        "DROP TRIGGER IF EXISTS videos_search_vector ON videos",
        "DROP TRIGGER IF EXISTS users_search_rename ON users",
        "DROP FUNCTION IF EXISTS videos_search_vector()",
        "DROP FUNCTION IF EXISTS users_search_rename()",
        "DROP INDEX IF EXISTS ix_videos_search",
        "DROP INDEX IF EXISTS ix_users_search",  # made by the first migrations
        "ALTER TABLE videos DROP COLUMN IF EXISTS search_vector",
    ):
        connection.exec_driver_sql(statement)


def create_engine(
    database_url: str, *, timeout: float = 5.0, statement_timeout: float = 30.0
) -> AsyncEngine:
    """An async engine for `database_url`, with SQLite tuned for a concurrent web app.

    Every wait is bounded, so a database that is down or restarting fails a request in
    seconds (a 503, portal.outages) instead of hanging it: `timeout` for a connection from
    the pool and for connecting, `statement_timeout` for one statement (PostgreSQL), and so
    for a checkout's ping.

    Dead PostgreSQL connections are replaced, so service resumes by itself when the server
    is back: a connection that sat idle in the pool for a second, or was there when another
    one was found dead, is pinged at checkout and replaced if the ping fails
    (portal.idle_ping). One used within the last second is not pinged: a pre-ping at every
    checkout cost the catalog's newest page a quarter of its time. So a request in the
    first second after a restart may still meet a dead connection and answer 503 (the
    catalog's reads retry once on a fresh connection instead); the request after it
    works."""
    if database_url.startswith("sqlite"):
        engine = create_async_engine(
            database_url, connect_args={"timeout": statement_timeout}, pool_timeout=timeout
        )

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_connection: object, _record: object) -> None:
            cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
            # WAL lets readers go on while a worker writes; foreign keys are off by default.
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        WriteGate.install(engine)  # writers queue in-process, not in SQLite's sleeping retry
        return engine
    engine = create_async_engine(
        database_url,
        pool_timeout=timeout,
        connect_args={"timeout": timeout, "command_timeout": statement_timeout},
    )
    IdlePing.install(engine)
    return engine


@asynccontextmanager
async def begin_write(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """`engine.begin()`, but on SQLite a BEGIN IMMEDIATE: the write lock is taken up front, so
    a transaction that reads and then writes cannot interleave with another one doing the
    same (SQLite's deferred BEGIN would let both read, then fail one with "database is
    locked"). On PostgreSQL a plain transaction; row locks and constraints do the rest."""
    async with engine.connect() as conn:
        if conn.dialect.name == "sqlite":
            await conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            await conn.begin()
        try:
            yield conn
        except BaseException:
            await conn.rollback()
            raise
        await conn.commit()
