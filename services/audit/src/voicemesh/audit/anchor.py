"""Signed chain heads: what pins the audit chain outside the database that holds it.

A chain links only to itself, so whoever can write the table can rewrite every row and
recompute every hash. ``HeadSigner`` signs each tenant's head (tenant, seq, hash, time)
with the audit Ed25519 key and publishes it on ``vm.<tenant>.event.audit_head``, stored by
the EVENTS stream. The tenant's NATS user may append to that stream but never delete from
or purge it, and the database's users cannot reach it at all, so a head exported before a
rewrite still names the hash the chain had at that seq: ``verify`` checks against it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from nats.errors import Error as NatsError
from nats.js.errors import NotFoundError
from pydantic import ValidationError
from sqlalchemy import select

from voicemesh.audit.chain import canonical_json, iso_timestamp
from voicemesh.audit.models import HEAD, LOG
from voicemesh.common.contracts import subjects
from voicemesh.common.contracts.errors import UnavailableError
from voicemesh.common.contracts.events import AuditHeadSigned
from voicemesh.common.contracts.ids import derived_id
from voicemesh.common.contracts.streams import stream_for
from voicemesh.common.runtime.connection import connect
from voicemesh.common.runtime.db import Database
from voicemesh.common.runtime.publisher import JetStreamPublisher
from voicemesh.common.runtime.settings import NatsSettings
from voicemesh.common.runtime.tasks import PeriodicTask

__all__ = [
    "HEAD_EVENT_TYPE",
    "AuditHeadSigned",
    "HeadSigner",
    "fetch_heads",
    "head_subject",
    "key_id",
    "keygen",
    "load_private_key",
    "load_public_key",
    "private_key_pem",
    "public_key_pem",
    "read_heads",
    "sign_head",
    "signature_valid",
    "statement",
]

log = logging.getLogger(__name__)

HEAD_EVENT_TYPE: Final = "audit.head_signed"
#: Bound into every signature, so no other Ed25519 signature can pass for a head.
_DOMAIN = "voicemesh.audit.head.v1"


def statement(head: AuditHeadSigned) -> bytes:
    """The bytes the signature covers (the envelope's id and times are not part of it)."""
    return canonical_json(
        {
            "domain": _DOMAIN,
            "tenant": head.tenant,
            "seq": head.seq,
            "hash": head.head_hash,
            "signed_at": head.signed_at,
            "key_id": head.key_id,
        }
    ).encode("utf-8")


def head_subject(tenant: str) -> str:
    """``vm.<tenant>.event.audit_head``: EVENTS stores it, the tenant cannot delete it."""
    return subjects.event(tenant, "audit_head")


# -- keys -------------------------------------------------------------------------------------


def load_private_key(pem: bytes) -> Ed25519PrivateKey:
    """The audit signing key from its PEM (PKCS#8, unencrypted); ``ValueError`` otherwise."""
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError("the audit signing key must be an Ed25519 key")
    return key


def load_public_key(pem: bytes) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(pem)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("the audit public key must be an Ed25519 key")
    return key


def private_key_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def public_key_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def key_id(key: Ed25519PublicKey) -> str:
    """A short name of a public key: which key signed a head, when keys are rotated."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def keygen(argv: list[str]) -> int:
    """``python -m voicemesh.audit keygen DIR``: a new key pair as DIR/private.pem, public.pem."""
    if len(argv) != 1 or argv[0].startswith("-"):
        print("usage: python -m voicemesh.audit keygen DIR", file=sys.stderr)
        return 2
    out = Path(argv[0])
    key = Ed25519PrivateKey.generate()
    private = out / "private.pem"
    private.touch(mode=0o600, exist_ok=False)  # never readable by others, never overwritten
    private.write_bytes(private_key_pem(key))
    (out / "public.pem").write_bytes(public_key_pem(key.public_key()))
    print(f"audit signing key {key_id(key.public_key())} written to {out}")
    return 0


# -- signing and checking ---------------------------------------------------------------------


def sign_head(
    key: Ed25519PrivateKey, tenant: str, seq: int, head_hash: str, *, at: datetime
) -> AuditHeadSigned:
    unsigned = AuditHeadSigned(
        # One id per head: a head signed again (a restart, a second replica) is deduplicated.
        event_id=derived_id(tenant, "audit-head", str(seq), head_hash),
        tenant=tenant,
        source="audit",
        seq=seq,
        head_hash=head_hash,
        signed_at=iso_timestamp(at),
        key_id=key_id(key.public_key()),
        signature="",
    )
    signature = base64.b64encode(key.sign(statement(unsigned))).decode("ascii")
    return unsigned.model_copy(update={"signature": signature})


def signature_valid(head: AuditHeadSigned, key: Ed25519PublicKey) -> bool:
    try:
        key.verify(base64.b64decode(head.signature, validate=True), statement(head))
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True


async def fetch_heads(settings: NatsSettings, tenant: str | None) -> list[AuditHeadSigned]:
    """Every signed head of ``tenant`` (``None``: every tenant) the EVENTS stream holds."""
    subject = head_subject(tenant or subjects.ANY)
    stream = stream_for(subject)
    assert stream is not None  # an event subject
    heads: list[AuditHeadSigned] = []
    try:
        nc = await connect(settings, name="audit-verify")
    except (OSError, NatsError) as exc:
        raise UnavailableError(f"NATS: {type(exc).__name__}") from exc
    try:
        jsm = nc.jetstream()
        seq = 1
        while True:
            try:
                msg = await jsm.get_msg(stream, seq, subject=subject, next=True)
            except NotFoundError:
                return heads
            heads.append(AuditHeadSigned.model_validate_json(msg.data or b""))
            seq = (msg.seq or seq) + 1
    except (NatsError, ValidationError) as exc:
        raise UnavailableError(f"signed heads in {stream}: {type(exc).__name__}") from exc
    finally:
        await nc.close()


def read_heads(path: Path) -> list[AuditHeadSigned]:
    """Signed heads from a file: one JSON head a line, as published (blank lines skipped)."""
    heads = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            heads.append(AuditHeadSigned.model_validate_json(line))
        except ValidationError as exc:
            raise ValueError(f"{path}:{number}: not a signed audit head") from exc
    return heads


# -- the signer -------------------------------------------------------------------------------


class HeadSigner:
    """Signs and publishes every served tenant's head each ``interval_s`` if it moved.

    It signs only a head that extends the last one it signed: if the row at that seq no
    longer has the signed hash, the chain was rewritten under it, and signing the new head
    would lend the rewrite a signature, so it logs an error and signs nothing more for the
    tenant (``verify`` names the rewrite).
    """

    def __init__(
        self,
        db: Database,
        publisher: JetStreamPublisher,
        key: Ed25519PrivateKey,
        *,
        tenants: Iterable[str] | None,
        interval_s: float,
    ) -> None:
        self._db = db
        self._publisher = publisher
        self._key = key
        self._tenants = None if tenants is None else frozenset(tenants)
        self._signed: dict[str, tuple[int, str]] = {}
        self._refused: set[str] = set()
        self._task = PeriodicTask(self.sign_round, interval_s=interval_s, name="audit-head-signer")

    async def start(self) -> None:
        self._task.start()

    async def stop(self) -> None:
        await self._task.stop()

    async def sign_round(self) -> list[AuditHeadSigned]:
        """Sign and publish the heads that moved; return what was published."""
        async with self._db.session() as session:
            stmt = select(HEAD.c.tenant, HEAD.c.seq, HEAD.c.hash)
            if self._tenants is not None:
                stmt = stmt.where(HEAD.c.tenant.in_(self._tenants))
            heads = list((await session.execute(stmt)).all())
        published = []
        for tenant, seq, digest in heads:
            if tenant in self._refused or self._signed.get(tenant) == (seq, digest):
                continue
            if not await self._extends_signed(tenant):
                continue
            head = sign_head(self._key, tenant, seq, digest, at=datetime.now(UTC))
            await self._publisher.publish(head, head_subject(tenant))
            self._signed[tenant] = (seq, digest)
            published.append(head)
        return published

    async def _extends_signed(self, tenant: str) -> bool:
        if (last := self._signed.get(tenant)) is None:
            return True
        seq, digest = last
        async with self._db.session() as session:
            now = (
                await session.execute(
                    select(LOG.c.hash).where(LOG.c.tenant == tenant, LOG.c.seq == seq)
                )
            ).scalar_one_or_none()
        if now == digest:
            return True
        self._refused.add(tenant)
        log.error(
            "audit chain of %s no longer has the hash signed at seq %d: rewritten; "
            "no further heads are signed for it",
            tenant,
            seq,
        )
        return False
