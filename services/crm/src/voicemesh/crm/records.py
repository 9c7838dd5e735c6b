"""The per-vertical records: listings (real estate), matters (legal), policies and claims
(insurance), and the sample records an empty demo tenant is given."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import func
from sqlalchemy.exc import IntegrityError
from sqlmodel import SQLModel, col, select

from voicemesh.common import NotFound
from voicemesh.common.contracts.events import ToolErrorCode
from voicemesh.common.contracts.tools import Claim as ClaimOut
from voicemesh.common.contracts.tools import (
    ConflictCheckArgs,
    ConflictCheckResult,
    ConflictMatch,
    FileClaimArgs,
    ListingsResult,
    LookupPolicyArgs,
    SearchListingsArgs,
    ToolFailure,
)
from voicemesh.common.contracts.tools import Listing as ListingOut
from voicemesh.common.contracts.tools import Policy as PolicyOut
from voicemesh.common.runtime.db import Database
from voicemesh.crm.models import Claim, Listing, Matter, Policy, new_id
from voicemesh.crm.store import crm_session, name_key, output_of

__all__ = ["VerticalRecords"]

R = TypeVar("R", bound=SQLModel)


class VerticalRecords:
    """What the real-estate, legal and insurance tools read and write."""

    def __init__(self, db: Database) -> None:
        self._db = db

    # -- real estate ------------------------------------------------------------------------

    async def search_listings(self, tenant: str, args: SearchListingsArgs) -> ListingsResult:
        query = select(Listing).where(Listing.tenant == tenant)
        if args.city:
            query = query.where(Listing.city_key == name_key(args.city))
        if args.min_price is not None:
            query = query.where(col(Listing.price) >= args.min_price)
        if args.max_price is not None:
            query = query.where(col(Listing.price) <= args.max_price)
        if args.min_beds is not None:
            query = query.where(col(Listing.beds) >= args.min_beds)
        if args.min_baths is not None:
            query = query.where(col(Listing.baths) >= args.min_baths)
        if args.status != "any":
            query = query.where(Listing.status == args.status)
        async with crm_session(self._db) as session:
            rows = (await session.exec(query.order_by(col(Listing.price)).limit(args.limit))).all()
        return ListingsResult(listings=[output_of(ListingOut, r, listing_id=r.id) for r in rows])

    # -- legal ------------------------------------------------------------------------------

    async def conflict_check(self, tenant: str, args: ConflictCheckArgs) -> ConflictCheckResult:
        async with crm_session(self._db) as session:
            matters = (await session.exec(select(Matter).where(Matter.tenant == tenant))).all()
        matches = []
        for party in args.parties:
            key = name_key(party)
            for matter in matters:
                adverse = {name_key(p) for p in matter.adverse_parties.split(";") if p.strip()}
                for role, hit in (
                    ("client", name_key(matter.client_name) == key),
                    ("adverse", key in adverse),
                ):
                    if hit:
                        matches.append(
                            ConflictMatch(
                                party=party, matter_id=matter.id, matter=matter.title, role=role
                            )
                        )
        return ConflictCheckResult(clear=not matches, matches=matches)

    # -- insurance --------------------------------------------------------------------------

    async def lookup_policy(self, tenant: str, args: LookupPolicyArgs) -> PolicyOut:
        async with crm_session(self._db) as session:
            if args.policy_number:
                row = await session.get(Policy, (tenant, args.policy_number))
            else:
                row = (
                    await session.exec(
                        select(Policy).where(
                            Policy.tenant == tenant, Policy.holder_phone == args.phone
                        )
                    )
                ).first()
        if row is None:
            raise NotFound("no policy matches")
        return PolicyOut.model_validate(row, from_attributes=True)

    async def file_claim(self, tenant: str, args: FileClaimArgs) -> ClaimOut:
        policy = await self.lookup_policy(
            tenant, LookupPolicyArgs(policy_number=args.policy_number)
        )
        if policy.status != "active":
            raise ToolFailure(
                ToolErrorCode.CONFLICT, f"policy {policy.policy_number} is not active"
            )
        now = datetime.now(UTC)
        if args.incident_date > now.date():
            raise ToolFailure(ToolErrorCode.INVALID, "the incident date is in the future")
        claim = Claim(
            tenant=tenant,
            policy_number=args.policy_number,
            incident_date=args.incident_date,
            description=args.description,
            idempotency_key=args.idempotency_key or new_id(),
            filed_at=now,
        )
        try:
            async with crm_session(self._db) as session:
                session.add(claim)
                await session.commit()
        except IntegrityError:
            async with crm_session(self._db) as session:
                claim = (
                    await session.exec(
                        select(Claim).where(
                            Claim.tenant == tenant, Claim.idempotency_key == claim.idempotency_key
                        )
                    )
                ).one()
        return output_of(ClaimOut, claim, claim_id=claim.id)

    # -- demo data --------------------------------------------------------------------------

    async def seed(self, tenant: str, vertical: str) -> None:
        """Sample records for an empty demo tenant, so the agent's tools have data to find."""
        sample = _SAMPLES.get(vertical)
        if sample is None:
            return
        model, rows = sample
        async with crm_session(self._db) as session:
            count = await session.exec(
                select(func.count()).select_from(model).where(col(model.tenant) == tenant)
            )
            if count.one() == 0:
                session.add_all(rows(tenant))
                await session.commit()


def _records(model: type[R], tenant: str, columns: str, rows: Iterable[Sequence[Any]]) -> list[R]:
    """``tenant``'s ``model`` rows: each of ``rows`` gives the ``columns`` (names, space
    separated) in that order."""
    names = columns.split()
    return [
        model.model_validate({"tenant": tenant, **dict(zip(names, row, strict=True))})
        for row in rows
    ]


def _listings(tenant: str) -> list[Listing]:
    rows = (
        ("17 Willow Bend", "Riverside", 465_000, 3, 2.0, "active"),
        ("302 Cedar St", "Riverside", 529_000, 3, 2.5, "active"),
        ("64 Birch Hollow", "Riverside", 612_000, 4, 3.0, "active"),
        ("8 Quarry Rd", "Riverside", 289_000, 2, 1.0, "active"),
        ("12 Harbor View Rd", "Springfield", 425_000, 3, 2.0, "active"),
        ("88 Maple Ave", "Springfield", 310_000, 2, 1.0, "active"),
        ("5 Orchard Ln", "Springfield", 689_000, 4, 3.5, "active"),
        ("230 River St, Apt 4", "Shelbyville", 255_000, 1, 1.0, "active"),
        ("41 Elm Ct", "Shelbyville", 515_000, 4, 2.5, "pending"),
        ("9 Lakeside Dr", "Springfield", 950_000, 5, 4.0, "sold"),
    )
    columns = "address city price beds baths status city_key"
    return _records(Listing, tenant, columns, [(*row, name_key(row[1])) for row in rows])


def _matters(tenant: str) -> list[Matter]:
    return _records(
        Matter,
        tenant,
        "title client_name adverse_parties",
        (
            ("Acme Corp v. Globex", "Acme Corp", "Globex Corporation; Hank Scorpio"),
            ("Estate of J. Doe", "Jane Doe", ""),
            ("Smith lease dispute", "Robert Smith", "Springfield Properties LLC"),
        ),
    )


def _policies(tenant: str) -> list[Policy]:
    return _records(
        Policy,
        tenant,
        "policy_number holder_name holder_phone kind status deductible",
        (
            ("412551", "Sam Rivera", "+15555550103", "auto", "active", 500),
            ("POL-1001", "Ada Lovelace", "+15555550100", "auto", "active", 500),
            ("POL-1002", "Alan Turing", "+15555550101", "home", "active", 1000),
            ("POL-1003", "Grace Hopper", "+15555550102", "auto", "lapsed", 250),
        ),
    )


_SAMPLES: dict[
    str, tuple[type[Listing] | type[Matter] | type[Policy], Callable[[str], Sequence[SQLModel]]]
] = {
    "real_estate": (Listing, _listings),
    "legal": (Matter, _matters),
    "insurance": (Policy, _policies),
}
