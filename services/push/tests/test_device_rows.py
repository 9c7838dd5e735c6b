"""Device rows on PostgreSQL: times in milliseconds need 64-bit columns.

SQLite's integers are 64-bit, so only PostgreSQL showed it: every device registration of a
deployed push answered 503 (value out of int32 range), and no phone could ring.
"""

from __future__ import annotations

import time

from sqlmodel import select

from voicemesh.common.runtime.db import Database
from voicemesh.push.devices import Device


async def test_a_device_registered_now_is_stored_and_read_back_on_postgres(
    postgres_url: str,
) -> None:
    now_ms = int(time.time() * 1000)
    assert now_ms > 2**31  # what a 32-bit column refuses
    async with Database(postgres_url) as db:
        async with db.model_session("push") as session:
            session.add(
                Device(
                    tenant="t-rows",
                    user_id="u",
                    token="ab" * 32,
                    bundle_id="io.voicemesh.demo",
                    environment="sandbox",
                    platform="ios",
                    registered_at_ms=now_ms,
                    deactivated_at_ms=now_ms + 1,
                )
            )
            await session.commit()
        async with db.model_session("push") as session:
            row = (await session.exec(select(Device).where(Device.tenant == "t-rows"))).one()
    assert (row.registered_at_ms, row.deactivated_at_ms) == (now_ms, now_ms + 1)
