"""The VoIP device registry: SQL is the truth, Redis caches each user's active devices.

A device is one PushKit token of one user of one tenant, with the app's bundle id and the
APNs environment it was issued for. Tokens that APNs reports as gone are deactivated, not
deleted, so the reason and time stay visible.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import asdict, dataclass
from typing import Literal

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError
from sqlalchemy import BigInteger
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import Field, SQLModel, UniqueConstraint, col, select

from voicemesh.common.contracts.errors import UnavailableError
from voicemesh.common.runtime.db import Database

__all__ = ["TOKEN_PATTERN", "Device", "DeviceRecord", "DeviceRegistry", "Environment"]

log = logging.getLogger(__name__)

Environment = Literal["sandbox", "production"]
#: A PushKit token is 32 bytes today (64 hex digits); Apple says not to rely on the length.
TOKEN_PATTERN = r"^(?:[0-9a-fA-F]{2}){32,100}$"  # noqa: S105 - a pattern, not a secret
_TOKEN = re.compile(TOKEN_PATTERN)


class Device(SQLModel, table=True):
    __tablename__ = "push_devices"
    __table_args__ = (UniqueConstraint("tenant", "token", name="uq_push_devices_tenant_token"),)

    id: int | None = Field(default=None, primary_key=True)
    tenant: str = Field(index=True, max_length=63)
    user_id: str = Field(index=True, max_length=128)
    token: str = Field(max_length=200)
    bundle_id: str = Field(max_length=255)
    environment: str = Field(max_length=16)
    platform: str = Field(max_length=16)
    active: bool = True
    # Milliseconds since the epoch pass 2**31: 64-bit columns (PostgreSQL's INTEGER is 32).
    registered_at_ms: int = Field(sa_type=BigInteger)
    deactivated_at_ms: int | None = Field(default=None, sa_type=BigInteger)
    deactivated_reason: str | None = Field(default=None, max_length=64)


@dataclass(frozen=True)
class DeviceRecord:
    """A device as the ringing code sees it (and as the cache stores it)."""

    tenant: str
    user_id: str
    token: str
    bundle_id: str
    environment: str
    platform: str
    active: bool
    registered_at_ms: int
    deactivated_at_ms: int | None = None
    deactivated_reason: str | None = None

    @classmethod
    def of(cls, row: Device) -> DeviceRecord:
        return cls(
            row.tenant,
            row.user_id,
            row.token,
            row.bundle_id,
            row.environment,
            row.platform,
            row.active,
            row.registered_at_ms,
            row.deactivated_at_ms,
            row.deactivated_reason,
        )


async def _find(session: AsyncSession, tenant: str, token: str) -> Device | None:
    query = select(Device).where(Device.tenant == tenant, Device.token == token)
    return (await session.execute(query)).scalars().first()


def _now_ms() -> int:
    return int(time.time() * 1000)


class DeviceRegistry:
    """Register, list and deactivate devices; reads go through a per-user Redis cache."""

    def __init__(self, db: Database, redis: Redis | None, *, cache_ttl_s: int = 300) -> None:
        self._db = db
        self._redis = redis
        self._ttl = cache_ttl_s

    @staticmethod
    def _cache_key(tenant: str, user_id: str) -> str:
        return f"voicemesh:push:devices:{tenant}:{user_id}"

    async def _forget(self, tenant: str, *user_ids: str) -> None:
        if self._redis is None:
            return
        try:
            await self._redis.delete(*(self._cache_key(tenant, u) for u in user_ids))
        except RedisError:
            # A stale cache entry expires with its TTL; the write itself succeeded.
            log.warning("could not invalidate the device cache", exc_info=True)

    async def register(
        self,
        tenant: str,
        user_id: str,
        token: str,
        *,
        bundle_id: str,
        environment: Environment = "production",
        platform: str = "ios",
    ) -> DeviceRecord:
        if not _TOKEN.fullmatch(token):
            raise ValueError("a device token is 64 to 200 hex digits")
        token = token.lower()
        previous_user: str | None = None
        # A token registered again (by this user or another) is active again, as if new.
        values = {
            "user_id": user_id,
            "bundle_id": bundle_id,
            "environment": environment,
            "platform": platform,
            "active": True,
            "registered_at_ms": _now_ms(),
            "deactivated_at_ms": None,
            "deactivated_reason": None,
        }
        try:
            async with self._db.session() as session:
                row = await _find(session, tenant, token)
                if row is None:
                    row = Device.model_validate({"tenant": tenant, "token": token, **values})
                else:
                    previous_user = row.user_id
                    row.sqlmodel_update(values)
                session.add(row)
                await session.commit()
                record = DeviceRecord.of(row)
        except (OperationalError, DBAPIError, OSError) as exc:
            raise UnavailableError("device database unavailable") from exc
        await self._forget(tenant, user_id, *([previous_user] if previous_user else []))
        return record

    async def unregister(self, tenant: str, token: str) -> bool:
        try:
            async with self._db.session() as session:
                row = await _find(session, tenant, token.lower())
                if row is None:
                    return False
                user_id = row.user_id
                await session.delete(row)
                await session.commit()
        except (OperationalError, DBAPIError, OSError) as exc:
            raise UnavailableError("device database unavailable") from exc
        await self._forget(tenant, user_id)
        return True

    async def list_devices(self, tenant: str, user_id: str | None = None) -> list[DeviceRecord]:
        try:
            async with self._db.session() as session:
                query = select(Device).where(Device.tenant == tenant)
                if user_id is not None:
                    query = query.where(Device.user_id == user_id)
                rows = (await session.execute(query.order_by(col(Device.id)))).scalars().all()
        except (OperationalError, DBAPIError, OSError) as exc:
            raise UnavailableError("device database unavailable") from exc
        return [DeviceRecord.of(r) for r in rows]

    def queue_cached(self, pipe: Pipeline, tenant: str, user_id: str) -> None:
        """Queue a read of the user's cached devices; ``from_cache`` reads the result."""
        pipe.get(self._cache_key(tenant, user_id))

    @staticmethod
    def from_cache(raw: object) -> list[DeviceRecord] | None:
        """The devices a ``queue_cached`` result holds, or ``None`` on a miss or an error."""
        if not isinstance(raw, bytes | str):
            return None
        try:
            return [DeviceRecord(**d) for d in json.loads(raw)]
        except (ValueError, TypeError):
            return None  # an entry another version wrote: read the database instead

    async def active_for_user(self, tenant: str, user_id: str) -> list[DeviceRecord]:
        key = self._cache_key(tenant, user_id)
        if self._redis is not None:
            try:
                cached = self.from_cache(await self._redis.get(key))
                if cached is not None:
                    return cached
            except RedisError:
                log.warning("device cache unavailable; reading the database", exc_info=True)
        devices = [d for d in await self.list_devices(tenant, user_id) if d.active]
        if self._redis is not None:
            try:
                await self._redis.set(key, json.dumps([asdict(d) for d in devices]), ex=self._ttl)
            except RedisError:
                log.warning("could not fill the device cache", exc_info=True)
        return devices

    async def deactivate(
        self, tenant: str, token: str, reason: str, *, not_registered_after_ms: int | None = None
    ) -> bool:
        """Deactivate a token APNs rejected; ``True`` if it was active.

        With ``not_registered_after_ms`` (APNs's 410 timestamp) a token registered again
        after that moment stays active: the app re-registered it since APNs saw it go.
        """
        try:
            async with self._db.session() as session:
                row = await _find(session, tenant, token)
                if row is None or not row.active:
                    return False
                if (
                    not_registered_after_ms is not None
                    and row.registered_at_ms > not_registered_after_ms
                ):
                    log.info("kept a token re-registered after APNs reported it %s", reason)
                    return False
                row.active = False
                row.deactivated_at_ms, row.deactivated_reason = _now_ms(), reason
                session.add(row)
                user_id = row.user_id
                await session.commit()
        except (OperationalError, DBAPIError, OSError) as exc:
            raise UnavailableError("device database unavailable") from exc
        await self._forget(tenant, user_id)
        return True
