"""`/admin/v1/tenants/{tenant_id}/limits`: read and replace a tenant's rate limits as one document.

The document holds the tenant's defaults (`rpm`, `tpm`, bursts, `concurrency`) and per-model
overrides (`models`); an absent figure is unlimited. PUT replaces every row (a model left out
loses its override) and takes `If-Match`. A change is propagated to every replica's principal
cache at once, since cached principals carry their limits.
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway.admin.api import Call, Operation, Reply, Unprocessable
from gateway.admin.audit import audit
from gateway.admin.schemas import Limits, ModelLimits
from gateway.admin.tenants import load_tenant, propagate
from gateway.db import tables
from gateway.db.limits import clear_limits, list_limits, set_limits
from gateway.errors import InvalidRequest

RATE_FIGURES = ("rpm", "tpm", "rpm_burst", "tpm_burst")


def as_limits(rows: Sequence[tables.Limits]) -> Limits:
    """The wire shape of a tenant's limits rows."""
    defaults: dict[str, int | None] = {}
    models: dict[str, ModelLimits] = {}
    for row in rows:
        figures = {name: getattr(row, name) for name in RATE_FIGURES}
        if row.model == tables.DEFAULT_MODEL:
            defaults = {**figures, "concurrency": row.concurrency}
        else:
            models[row.model] = ModelLimits(**figures)
    return Limits(**defaults, models=models)


async def _current(call: Call, tenant_id: str) -> Limits:
    return as_limits(await list_limits(call.session, tenant_id))


async def get_limits(call: Call) -> Reply:
    tenant = await load_tenant(call)
    return Reply(await _current(call, tenant.id), etag=True)


async def replace_limits(call: Call) -> Reply:
    tenant = await load_tenant(call)
    before = await _current(call, tenant.id)
    call.check_version(before)
    body: Limits = call.body
    defaults = body.model_dump(exclude={"models"})
    try:
        if any(value is not None for value in defaults.values()):
            await set_limits(call.session, tenant.id, model=None, **defaults, now=call.now)
        else:
            await clear_limits(call.session, tenant.id, model=None)
        for model in before.models.keys() - body.models.keys():
            await clear_limits(call.session, tenant.id, model=model)
        for model, figures in body.models.items():
            await set_limits(
                call.session, tenant.id, model=model, **figures.model_dump(), now=call.now
            )
    except InvalidRequest as exc:  # the schema checks the same rules; this is the backstop
        raise Unprocessable(exc.message, param=exc.param) from None
    after = await _current(call, tenant.id)
    await audit(
        call.session, call.actor, "limits.replace", "limits", tenant.id, now=call.now,
        tenant_id=tenant.id, before=before.model_dump(mode="json"),
        after=after.model_dump(mode="json"),
    )  # fmt: skip
    propagate(call, tenant.id)
    return Reply(after, etag=True)


OPERATIONS = [
    Operation("GET", "/tenants/{tenant_id}/limits", get_limits, "Read a tenant's limits",
              "limits", response=Limits),
    Operation("PUT", "/tenants/{tenant_id}/limits", replace_limits,
              "Replace a tenant's limits (If-Match)", "limits", body=Limits, response=Limits,
              errors=(404, 412)),
]  # fmt: skip
