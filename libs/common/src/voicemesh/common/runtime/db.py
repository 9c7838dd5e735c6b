"""SQL databases through SQLModel: SQLite by default, PostgreSQL through ``DATABASE_URL``.

Each service owns its tables; ``Database`` opens an async engine in the service's startup
hook and closes it on shutdown. URLs without an async driver are given one
(``sqlite://`` → ``sqlite+aiosqlite://``, ``postgresql://`` → ``postgresql+asyncpg://``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

from sqlalchemy import event, text
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlmodel import SQLModel
from sqlmodel.ext.asyncio.session import AsyncSession as SQLModelSession

from voicemesh.common.contracts.errors import UnavailableError

__all__ = ["Database", "async_url", "iso_timestamp"]

#: The PostgreSQL advisory lock that serialises schema creation across replicas.
_DDL_LOCK = 0x766D_6464_6C  # "vmddl"


def iso_timestamp(moment: datetime) -> str:
    """Fixed-width UTC ISO 8601 with microseconds: sorts as text in time order.

    Stored as text (not a DB datetime) so the value is byte-identical on SQLite and
    PostgreSQL (the audit chain hashes it), and time-range queries still work with plain
    string comparison. A naive ``moment`` is taken to be UTC.
    """
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def async_url(url: str) -> str:
    for plain, driver in (
        ("sqlite://", "sqlite+aiosqlite://"),
        ("postgresql://", "postgresql+asyncpg://"),
        ("postgres://", "postgresql+asyncpg://"),
    ):
        if url.startswith(plain):
            return driver + url[len(plain) :]
    return url


class Database:
    """One async engine and its session factory.

    A service opens it with ``MeshService.database()``; ``async with Database(url) as db``
    creates the tables and closes the engine after (scripts and tests).
    """

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = async_url(url)
        self.is_sqlite = self.url.startswith("sqlite")
        kwargs: dict[str, object] = {"echo": echo, "pool_pre_ping": not self.is_sqlite}
        if self.is_sqlite:
            kwargs["connect_args"] = {"timeout": 30}
        self.engine: AsyncEngine = create_async_engine(self.url, **kwargs)
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    async def create_all(self) -> None:
        """Create this process's tables (SQLModel metadata) if they do not exist.

        Replicas starting together would race on PostgreSQL (two ``CREATE TABLE`` of one
        name: a unique violation in its catalogue), so creators take one advisory lock in
        turn; the next one then finds the tables there.
        """
        try:
            async with self.engine.begin() as conn:
                if not self.is_sqlite:
                    await conn.execute(
                        text("SELECT pg_advisory_xact_lock(:key)"), {"key": _DDL_LOCK}
                    )
                await conn.run_sync(SQLModel.metadata.create_all)
        except (OperationalError, DBAPIError, OSError) as exc:
            raise UnavailableError(f"database unavailable: {type(exc).__name__}") from exc

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        async with self.sessions() as session:
            yield session

    @asynccontextmanager
    async def model_session(self, owner: str) -> AsyncIterator[SQLModelSession]:
        """A SQLModel session (typed ``exec``); an unreachable database is ``UnavailableError``.

        Integrity errors pass through: they are the caller's to translate (a slot taken).
        """
        try:
            async with SQLModelSession(self.engine, expire_on_commit=False) as session:
                yield session
        except IntegrityError:
            raise
        except (OperationalError, DBAPIError, OSError) as exc:
            raise UnavailableError(f"{owner} database unavailable: {type(exc).__name__}") from exc

    async def close(self) -> None:
        await self.engine.dispose()

    async def __aenter__(self) -> Database:
        await self.create_all()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()


def _sqlite_pragmas(dbapi_connection: object, _record: object) -> None:
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()
