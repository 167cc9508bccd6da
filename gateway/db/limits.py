"""Queries on `limits`: a tenant's stored rate limits, read back as a frozen `TenantLimits`.

A tenant has at most one default row (`model=None` here, `''` in the table: see
`tables.DEFAULT_MODEL`) and one row per model that overrides it. Setting a row replaces all of
its figures; an omitted (None) figure means unlimited. The authenticator reads these on a
cache miss, so a change takes effect within its TTL on every replica.
The caller owns the session and its transaction: these functions flush, never commit.
Failure mode: an unreachable database raises `DependencyUnavailable`; a figure below 1, a
concurrency on a model row or a burst without its rate raises `InvalidRequest`.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from types import MappingProxyType
from typing import Any, cast

from sqlalchemy import CursorResult, delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.db.engine import translate_db_errors
from gateway.db.tables import DEFAULT_MODEL, LIMIT_COLUMNS, Limits
from gateway.errors import InvalidRequest
from gateway.limits.policy import UNLIMITED, RateLimits, TenantLimits


async def set_limits(
    session: AsyncSession,
    tenant_id: str,
    *,
    model: str | None,
    rpm: int | None = None,
    tpm: int | None = None,
    rpm_burst: int | None = None,
    tpm_burst: int | None = None,
    concurrency: int | None = None,
    now: datetime,
) -> None:
    """Create or replace the tenant's default row (`model=None`) or one model's row."""
    figures = {
        "rpm": rpm,
        "tpm": tpm,
        "rpm_burst": rpm_burst,
        "tpm_burst": tpm_burst,
        "concurrency": concurrency,
    }
    _validate(model, figures)
    stmt = select(Limits).where(Limits.tenant_id == tenant_id, Limits.model == _stored(model))
    with translate_db_errors():
        row = (await session.execute(stmt)).scalar_one_or_none()
        if row is None:
            row = Limits(tenant_id=tenant_id, model=_stored(model))
            session.add(row)
        for name, value in figures.items():
            setattr(row, name, value)
        row.updated_at = now
        try:
            await session.flush()
        except IntegrityError as exc:
            # The transaction is now unusable; the caller's `session.begin()` rolls it back.
            raise InvalidRequest(
                f"Could not set limits for tenant {tenant_id!r}: it does not exist, or its "
                "limits were changed at the same time (retry)."
            ) from exc


async def clear_limits(session: AsyncSession, tenant_id: str, *, model: str | None) -> bool:
    """Delete the default row (`model=None`) or one model's row; False when there was none."""
    stmt = delete(Limits).where(Limits.tenant_id == tenant_id, Limits.model == _stored(model))
    with translate_db_errors():
        # A DELETE always yields a cursor result, which carries the matched row count.
        result = cast(CursorResult[Any], await session.execute(stmt))
    return result.rowcount > 0


async def list_limits(session: AsyncSession, tenant_id: str) -> list[Limits]:
    """Every limits row of a tenant: the default row first, then by model name."""
    stmt = select(Limits).where(Limits.tenant_id == tenant_id).order_by(Limits.model)
    with translate_db_errors():
        return list((await session.scalars(stmt)).all())


async def load_tenant_limits(session: AsyncSession, tenant_id: str) -> TenantLimits:
    """The tenant's limits, in one query; `UNLIMITED` when it has no rows."""
    return tenant_limits_from_rows(await list_limits(session, tenant_id))


def tenant_limits_from_rows(rows: Iterable[Limits]) -> TenantLimits:
    """Build the frozen policy value from a tenant's rows."""
    default = RateLimits()
    concurrency: int | None = None
    models: dict[str, RateLimits] = {}
    for row in rows:
        limits = RateLimits(
            rpm=row.rpm, tpm=row.tpm, rpm_burst=row.rpm_burst, tpm_burst=row.tpm_burst
        )
        if row.model == DEFAULT_MODEL:
            default, concurrency = limits, row.concurrency
        else:
            models[row.model] = limits
    if default == RateLimits() and concurrency is None and not models:
        return UNLIMITED
    return TenantLimits(default=default, models=MappingProxyType(models), concurrency=concurrency)


def model_label(row: Limits) -> str | None:
    """The row's model as the API spells it: None for the tenant's default row."""
    return None if row.model == DEFAULT_MODEL else row.model


def _stored(model: str | None) -> str:
    return DEFAULT_MODEL if model is None else model


def _validate(model: str | None, figures: dict[str, int | None]) -> None:
    if model == DEFAULT_MODEL:
        raise InvalidRequest(
            "An empty model name is not allowed: omit the model to set the tenant's defaults.",
            param="model",
        )
    for name in LIMIT_COLUMNS:
        value = figures[name]
        if value is not None and value < 1:
            raise InvalidRequest(f"{name} must be a positive integer, not {value}.", param=name)
    if model is not None and figures["concurrency"] is not None:
        raise InvalidRequest(
            "Concurrency is tenant-wide: set it on the tenant's defaults, not on a model.",
            param="concurrency",
        )
    for rate in ("rpm", "tpm"):
        if figures[f"{rate}_burst"] is not None and figures[rate] is None:
            raise InvalidRequest(f"{rate}_burst needs {rate} as well.", param=f"{rate}_burst")
