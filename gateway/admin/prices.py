"""`/admin/v1/prices`: list price versions and add new ones (append-only).

A price is never edited: a change is a new version with a later `effective_from`, and a second
version with the same (model, deployment, effective_from) is a 409. The API speaks decimal
amounts per million tokens (`"0.12"`); the table keeps micro-units. After a commit this
process reloads its price book at once (other replicas within `GATEWAY_PRICE_REFRESH_S`).
"""

from __future__ import annotations

from sqlalchemy import select

from gateway.admin.api import READERS, Call, Conflict, Operation, Reply
from gateway.admin.audit import audit
from gateway.admin.pages import paginate
from gateway.admin.schemas import Price, PriceCreate, PricePage, PriceQuery, amount_of, micros_of
from gateway.db import tables
from gateway.db.prices import add_price, find_price


def as_price(row: tables.Price) -> Price:
    """The wire shape of a price version."""
    return Price(
        id=row.id,
        model=row.model,
        deployment=row.deployment,
        currency=row.currency,
        input_per_mtok=amount_of(row.input_micros_per_mtok),
        output_per_mtok=amount_of(row.output_micros_per_mtok),
        effective_from=row.effective_from,
        created_at=row.created_at,
    )


def _refresh_price_book(call: Call) -> None:
    """After commit: this process prices with the new version from now on."""
    pipeline = getattr(call.request.app.state, "ledger_pipeline", None)
    if pipeline is not None:
        call.after_commit.append(pipeline.refresh_prices)


async def list_prices(call: Call) -> Reply:
    query: PriceQuery = call.query
    statement = select(tables.Price)
    if query.model is not None:
        statement = statement.where(tables.Price.model == query.model)
    rows, cursor = await paginate(
        call.session, statement, tables.Price.id, tables.Price.id, query, is_time=False
    )
    return Reply(PricePage(data=[as_price(r) for r in rows], next_cursor=cursor))


async def create_price(call: Call) -> Reply:
    body: PriceCreate = call.body
    existing = await find_price(
        call.session,
        model=body.model,
        deployment=body.deployment,
        effective_from=body.effective_from,
    )
    if existing is not None:
        raise Conflict(
            f"A price of {body.model!r} (deployment {body.deployment!r}) already starts at "
            f"{body.effective_from.isoformat()}: prices are append-only, add a later version.",
            param="effective_from",
        )
    row = await add_price(
        call.session,
        model=body.model,
        deployment=body.deployment,
        currency=body.currency,
        input_micros_per_mtok=micros_of(body.input_per_mtok),
        output_micros_per_mtok=micros_of(body.output_per_mtok),
        effective_from=body.effective_from,
        now=call.now,
    )
    price = as_price(row)
    await audit(
        call.session, call.actor, "price.create", "price", str(row.id), now=call.now,
        after=price.model_dump(mode="json"),
    )  # fmt: skip
    _refresh_price_book(call)
    return Reply(price, status=201)


OPERATIONS = [
    Operation("GET", "/prices", list_prices, "List price versions", "prices", roles=READERS,
              query=PriceQuery, response=PricePage, errors=()),
    Operation("POST", "/prices", create_price, "Add a price version (append-only)", "prices",
              body=PriceCreate, response=Price, status=201, errors=(409,)),
]  # fmt: skip
