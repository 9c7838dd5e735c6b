"""The throwaway PostgreSQL fixture gives each test its own real database."""

from __future__ import annotations

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
