"""Queries on `prices`: the versioned price catalog.

`load_price_book` reads every version into a `PriceBook` (the gateway refreshes it in the
background; requests never query prices). `seed_prices` inserts the routing file's list prices
that are not in the table yet (same model, deployment and effective_from), so seeding at every
start is idempotent and never overwrites a price an admin set. Prices are never updated in
place: a change is a new version with a later `effective_from`.
The caller owns the session and its transaction.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.config import PriceEntry
from gateway.db.tables import Price
from gateway.ledger.pricing import Price as PriceVersion
from gateway.ledger.pricing import PriceBook


async def load_price_book(session: AsyncSession) -> PriceBook:
    """Every price version in the table."""
    rows = (await session.scalars(select(Price))).all()
    return PriceBook(
        PriceVersion(
            version_id=row.id,
            model=row.model,
            deployment=row.deployment,
            currency=row.currency,
            input_micros_per_mtok=row.input_micros_per_mtok,
            output_micros_per_mtok=row.output_micros_per_mtok,
            effective_from_s=row.effective_from.timestamp(),
        )
        for row in rows
    )


async def add_price(
    session: AsyncSession,
    *,
    model: str,
    deployment: str = "",
    currency: str,
    input_micros_per_mtok: int,
    output_micros_per_mtok: int,
    effective_from: datetime,
    now: datetime,
) -> Price:
    """A new price version."""
    price = Price(
        model=model,
        deployment=deployment,
        currency=currency,
        input_micros_per_mtok=input_micros_per_mtok,
        output_micros_per_mtok=output_micros_per_mtok,
        effective_from=effective_from,
        created_at=now,
    )
    session.add(price)
    await session.flush()
    return price


async def seed_prices(session: AsyncSession, entries: Iterable[PriceEntry], now: datetime) -> int:
    """Insert the routing file's prices that are missing; returns how many were added."""
    existing = {
        (m, d, f.timestamp())
        for m, d, f in (
            await session.execute(select(Price.model, Price.deployment, Price.effective_from))
        ).all()
    }
    added = 0
    for entry in entries:
        if (entry.model, entry.deployment, entry.effective_from.timestamp()) in existing:
            continue
        input_micros, output_micros = entry.micros()
        await add_price(
            session,
            model=entry.model,
            deployment=entry.deployment,
            currency=entry.currency,
            input_micros_per_mtok=input_micros,
            output_micros_per_mtok=output_micros,
            effective_from=entry.effective_from,
            now=now,
        )
        added += 1
    return added


async def find_price(
    session: AsyncSession, *, model: str, deployment: str, effective_from: datetime
) -> Price | None:
    """The version of (model, deployment) starting at `effective_from`, if there is one."""
    return await session.scalar(
        select(Price).where(
            Price.model == model,
            Price.deployment == deployment,
            Price.effective_from == effective_from,
        )
    )
