"""The throwaway PostgreSQL fixture gives each test its own real database."""

from __future__ import annotations

import asyncio

from sqlalchemy import text

from voicemesh.common.runtime.db import Database


async def test_each_test_gets_a_fresh_postgres_database(postgres_url: str) -> None:
    db = Database(postgres_url)
    try:
        async with db.session() as session:
            version = (await session.execute(text("select version()"))).scalar_one()
            assert "PostgreSQL" in version
            tables = await session.execute(
                text("select count(*) from information_schema.tables where table_schema='public'")
            )
            assert tables.scalar_one() == 0
    finally:
        await db.close()


async def test_replicas_creating_the_schema_together_all_start(postgres_url: str) -> None:
    """Two push replicas once raced on CREATE TABLE and one crashed on a unique violation
    in PostgreSQL's catalogue: creators now take turns."""
    from sqlmodel import Field, SQLModel

    class RaceRow(SQLModel, table=True):
        __tablename__ = "race_rows"
        id: int | None = Field(default=None, primary_key=True)
        name: str = ""

    replicas = [Database(postgres_url) for _ in range(6)]
    try:
        await asyncio.gather(*(db.create_all() for db in replicas))
        async with replicas[0].session() as session:
            count = await session.execute(text("select count(*) from race_rows"))
            assert count.scalar_one() == 0
    finally:
        await asyncio.gather(*(db.close() for db in replicas))
        SQLModel.metadata.remove(RaceRow.__table__)  # type: ignore[attr-defined]
