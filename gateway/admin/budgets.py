"""`/admin/v1/tenants/{tenant_id}/budget`: read, set (PUT) and remove a tenant's monthly budget.

The API speaks decimal amounts (`"100.50"`); the table keeps micro-units. A read adds what the
ledger recorded this period (`spent`) and what is left (`remaining`, never below 0). The ETag
covers the budget's settings only, so spending does not make an `If-Match` stale. A change is
propagated to every replica's principal cache at once, since cached principals carry it.
"""

from __future__ import annotations

from gateway.admin.api import (
    READERS,
    Call,
    Operation,
    PreconditionFailed,
    Reply,
    Unprocessable,
    etag_of,
)
from gateway.admin.audit import audit
from gateway.admin.schemas import Budget, BudgetBody, amount_of, micros_of
from gateway.admin.tenants import load_tenant, propagate
from gateway.db.budgets import clear_budget, load_budget, set_budget
from gateway.db.usage import spend_micros
from gateway.errors import InvalidRequest, NotFound
from gateway.limits.budget import BudgetPolicy, period_bounds


def as_settings(policy: BudgetPolicy) -> BudgetBody:
    """The stored budget in the shape a PUT sends (what the ETag covers)."""
    return BudgetBody(
        amount=amount_of(policy.amount_micros),
        currency=policy.currency,
        hard=policy.hard,
        shrink_max_tokens=policy.shrink_max_tokens,
        min_output_tokens=policy.min_output_tokens,
        thresholds_pct=list(policy.thresholds_pct),
    )


async def as_budget(call: Call, tenant_id: str, policy: BudgetPolicy) -> Budget:
    """The wire shape: the settings plus this period's spend from the ledger."""
    start, end = period_bounds(call.now.timestamp())
    spent = await spend_micros(call.session, tenant_id, policy.currency, start, end)
    return Budget(
        tenant_id=tenant_id,
        **as_settings(policy).model_dump(),
        period_start=start,
        period_end=end,
        spent=amount_of(spent),
        remaining=amount_of(max(0, policy.amount_micros - spent)),
    )


def _tagged(budget: Budget, policy: BudgetPolicy, status: int = 200) -> Reply:
    etag = etag_of(as_settings(policy).model_dump(mode="json"))
    return Reply(budget, status=status, headers={"etag": etag})


async def _load(call: Call) -> tuple[str, BudgetPolicy]:
    tenant = await load_tenant(call)
    policy = await load_budget(call.session, tenant.id)
    if policy is None:
        raise NotFound(f"Tenant {tenant.id!r} has no budget.", param="tenant_id")
    return tenant.id, policy


async def get_budget(call: Call) -> Reply:
    tenant_id, policy = await _load(call)
    return _tagged(await as_budget(call, tenant_id, policy), policy)


async def put_budget(call: Call) -> Reply:
    tenant = await load_tenant(call)
    current = await load_budget(call.session, tenant.id)
    if current is not None:
        call.check_version(as_settings(current))
    elif call.if_match is not None:
        raise PreconditionFailed("If-Match was sent, but the tenant has no budget yet.")
    body: BudgetBody = call.body
    policy = BudgetPolicy(
        amount_micros=micros_of(body.amount),
        currency=body.currency,
        hard=body.hard,
        shrink_max_tokens=body.shrink_max_tokens,
        min_output_tokens=body.min_output_tokens,
        thresholds_pct=tuple(body.thresholds_pct),
    )
    try:
        await set_budget(call.session, tenant.id, policy, call.now)
    except InvalidRequest as exc:  # the schema checks the same rules; this is the backstop
        raise Unprocessable(exc.message, param=exc.param) from None
    stored = await load_budget(call.session, tenant.id)
    assert stored is not None  # just written, in this transaction
    await audit(
        call.session, call.actor, "budget.set", "budget", tenant.id, now=call.now,
        tenant_id=tenant.id,
        before=as_settings(current).model_dump(mode="json") if current else None,
        after=as_settings(stored).model_dump(mode="json"),
    )  # fmt: skip
    propagate(call, tenant.id)
    return _tagged(await as_budget(call, tenant.id, stored), stored)


async def delete_budget(call: Call) -> Reply:
    tenant_id, policy = await _load(call)
    before = as_settings(policy)
    call.check_version(before)
    await clear_budget(call.session, tenant_id)
    await audit(
        call.session, call.actor, "budget.delete", "budget", tenant_id, now=call.now,
        tenant_id=tenant_id, before=before.model_dump(mode="json"),
    )  # fmt: skip
    propagate(call, tenant_id)
    return Reply(None, status=204)


OPERATIONS = [
    Operation("GET", "/tenants/{tenant_id}/budget", get_budget,
              "Read a tenant's budget and this period's spend", "budgets", roles=READERS,
              response=Budget),
    Operation("PUT", "/tenants/{tenant_id}/budget", put_budget,
              "Set a tenant's monthly budget (If-Match)", "budgets", body=BudgetBody,
              response=Budget, errors=(404, 412)),
    Operation("DELETE", "/tenants/{tenant_id}/budget", delete_budget,
              "Remove a tenant's budget (If-Match)", "budgets", status=204, errors=(404, 412)),
]  # fmt: skip
