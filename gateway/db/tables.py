"""The database schema: SQLAlchemy 2 declarative models, portable across Postgres and SQLite.

Constraint and index names come from one naming convention, so Alembic migrations name them
the same way on both backends and can drop or alter them later. Timestamps are always
timezone-aware UTC in Python: Postgres stores `timestamptz`; SQLite has no time zones, so
`UTCDateTime` stores naive UTC there and re-attaches UTC on the way out.

Invariants: keys are stored only as an HMAC (`key_hash`) plus a short display prefix, never
in clear; deleting a tenant deletes its keys and limits (ON DELETE CASCADE, on SQLite too
because `engine.py` turns foreign keys on); a tenant has at most one default limits row
(`model = ''`, see `Limits`) and one row per model.
"""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

RESIDENCIES = ("eu", "any")
TENANT_STATUSES = ("active", "suspended")


def new_id() -> str:
    """A fresh uuid4 primary key, as a string (portable: no native UUID type on SQLite)."""
    return str(uuid.uuid4())


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is always timezone-aware UTC in Python, on every backend."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            # A naive datetime is ambiguous; refusing it keeps local times out of the ledger.
            raise ValueError("naive datetime: pass a timezone-aware (UTC) datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def _in_list(column: str, values: tuple[str, ...]) -> str:
    quoted = ", ".join(f"'{v}'" for v in values)
    return f"{column} IN ({quoted})"


class Base(DeclarativeBase):
    """Declarative base; its metadata carries the naming convention."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime()}


class Tenant(Base):
    """A team that calls the gateway: its residency policy, status and allowed models."""

    __tablename__ = "tenants"
    __table_args__ = (
        CheckConstraint(_in_list("residency", RESIDENCIES), name="residency"),
        CheckConstraint(_in_list("status", TENANT_STATUSES), name="status"),
        CheckConstraint("default_output_tokens > 0", name="default_output_tokens_positive"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    residency: Mapped[str] = mapped_column(String(16), default="any", server_default="any")
    status: Mapped[str] = mapped_column(String(16), default="active", server_default="active")
    # None means every model; a list restricts the tenant to those public model names.
    allowed_models: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime]
    # Output tokens reserved for a request without `max_tokens`; None = the routing file's default.
    default_output_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)


class ApiKey(Base):
    """A tenant API key, stored as its HMAC and a display prefix only."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("tenants.id", ondelete="CASCADE"), index=True
    )
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    name: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]


DEFAULT_MODEL = ""
"""`Limits.model` of a tenant's default row.

An empty string rather than NULL: a unique constraint treats NULLs as distinct on both
backends, so NULL would allow several default rows per tenant. `''` keeps "one default row
per tenant" a plain unique constraint, identical on Postgres and SQLite (no partial index).
"""

LIMIT_COLUMNS = ("rpm", "tpm", "rpm_burst", "tpm_burst", "concurrency")


class Limits(Base):
    """A tenant's rate limits: its default row (`model = ''`) and per-model overrides.

    A NULL figure means unlimited for that dimension. `concurrency` applies tenant-wide, so
    only the default row may carry it.
    """

    __tablename__ = "limits"
    __table_args__ = (
        # Named by hand: the convention would say `uq_limits_tenant_id`, which reads as if
        # tenant_id alone were unique. Its index leads with tenant_id, so it also serves
        # "all rows of a tenant" and no separate tenant_id index is needed.
        UniqueConstraint("tenant_id", "model", name="uq_limits_tenant_id_model"),
        *(CheckConstraint(f"{c} > 0", name=f"{c}_positive") for c in LIMIT_COLUMNS),
        CheckConstraint(
            f"concurrency IS NULL OR model = '{DEFAULT_MODEL}'", name="concurrency_on_default"
        ),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(String(36), ForeignKey("tenants.id", ondelete="CASCADE"))
    model: Mapped[str] = mapped_column(String(200), default=DEFAULT_MODEL)
    rpm: Mapped[int | None] = mapped_column(Integer)
    tpm: Mapped[int | None] = mapped_column(Integer)
    rpm_burst: Mapped[int | None] = mapped_column(Integer)
    tpm_burst: Mapped[int | None] = mapped_column(Integer)
    concurrency: Mapped[int | None] = mapped_column(Integer)
    updated_at: Mapped[datetime]


ANY_DEPLOYMENT = ""
"""`Price.deployment` of a price that applies to every deployment of the model (see
`DEFAULT_MODEL` for why an empty string and not NULL)."""

TOKEN_SOURCES = ("provider", "metered", "estimated")
BUDGET_PERIODS = ("month",)


class Price(Base):
    """One version of a model's price: in force from `effective_from` until the next version.

    Amounts are integer micro-units of `currency` per million tokens (0.15 EUR/M = 150000), so
    a cost is exact integer arithmetic. `deployment = ''` prices the model everywhere; a row
    naming a deployment (a self-hosted replica's chargeback price) wins over it.
    """

    __tablename__ = "prices"
    __table_args__ = (
        UniqueConstraint(
            "model", "deployment", "effective_from", name="uq_prices_model_deployment_from"
        ),
        CheckConstraint("input_micros_per_mtok >= 0", name="input_non_negative"),
        CheckConstraint("output_micros_per_mtok >= 0", name="output_non_negative"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model: Mapped[str] = mapped_column(String(200))
    deployment: Mapped[str] = mapped_column(String(64), default=ANY_DEPLOYMENT)
    currency: Mapped[str] = mapped_column(String(3))
    input_micros_per_mtok: Mapped[int] = mapped_column(BigInteger)
    output_micros_per_mtok: Mapped[int] = mapped_column(BigInteger)
    effective_from: Mapped[datetime]
    created_at: Mapped[datetime]


class UsageEvent(Base):
    """One row per request the gateway admitted: tokens, cost, route, timings, outcome.

    `request_id` is the gateway's own id and the idempotency key of the ledger pipeline
    (writers insert with ON CONFLICT DO NOTHING). Upstream ids can repeat or be missing, so
    `upstream_id` is kept but never used as a key. `cost_micros` is NULL (and `unpriced` true)
    when no price was in force: never a silent 0. `jurisdictions` lists where the request was
    actually sent, so "did tenant X ever leave the EU" is one indexed query.
    """

    __tablename__ = "usage_events"
    __table_args__ = (
        CheckConstraint(_in_list("token_source", TOKEN_SOURCES), name="token_source"),
        Index("ix_usage_events_tenant_id_started_at", "tenant_id", "started_at"),
        Index("ix_usage_events_started_at", "started_at"),
    )

    request_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(36))
    key_id: Mapped[str] = mapped_column(String(36))
    endpoint: Mapped[str] = mapped_column(String(32))
    model: Mapped[str] = mapped_column(String(200))
    upstream_model: Mapped[str | None] = mapped_column(String(200))
    deployment: Mapped[str | None] = mapped_column(String(64))
    region: Mapped[str | None] = mapped_column(String(64))
    stream: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[int] = mapped_column(Integer)
    error_code: Mapped[str | None] = mapped_column(String(64))
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    token_source: Mapped[str] = mapped_column(String(16))
    cost_micros: Mapped[int | None] = mapped_column(BigInteger)
    currency: Mapped[str | None] = mapped_column(String(3))
    unpriced: Mapped[bool] = mapped_column(Boolean, default=False)
    price_version_id: Mapped[int | None] = mapped_column(Integer)
    attempts: Mapped[int] = mapped_column(Integer)
    residency: Mapped[str] = mapped_column(String(64))
    jurisdictions: Mapped[str] = mapped_column(String(200))
    route: Mapped[dict[str, Any]] = mapped_column(JSON)
    upstream_id: Mapped[str | None] = mapped_column(String(200))
    gateway_latency_ms: Mapped[int] = mapped_column(Integer)
    upstream_latency_ms: Mapped[int | None] = mapped_column(Integer)
    ttft_ms: Mapped[int | None] = mapped_column(Integer)
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime]


class UsageDaily(Base):
    """The rollup finance dashboards read: tenant x model x deployment x UTC day."""

    __tablename__ = "usage_daily"

    day: Mapped[date] = mapped_column(Date, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    deployment: Mapped[str] = mapped_column(String(64), primary_key=True)
    currency: Mapped[str] = mapped_column(String(3), primary_key=True)
    requests: Mapped[int] = mapped_column(BigInteger)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger)
    completion_tokens: Mapped[int] = mapped_column(BigInteger)
    cost_micros: Mapped[int] = mapped_column(BigInteger)
    unpriced_requests: Mapped[int] = mapped_column(BigInteger)


class Budget(Base):
    """A tenant's spending cap per period, in one currency.

    `hard`: admission refuses what could cross it; soft: served, alerts at `thresholds_pct`.
    `shrink_max_tokens`: a hard budget may lower `max_tokens` to what is left instead of
    refusing, when at least `min_output_tokens` still fit.
    """

    __tablename__ = "budgets"
    __table_args__ = (
        CheckConstraint(_in_list("period", BUDGET_PERIODS), name="period"),
        CheckConstraint("amount_micros >= 0", name="amount_non_negative"),
    )

    tenant_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    period: Mapped[str] = mapped_column(String(16), default="month")
    amount_micros: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    hard: Mapped[bool] = mapped_column(Boolean, default=True)
    shrink_max_tokens: Mapped[bool] = mapped_column(Boolean, default=False)
    min_output_tokens: Mapped[int] = mapped_column(Integer, default=16)
    thresholds_pct: Mapped[list[int]] = mapped_column(JSON)
    updated_at: Mapped[datetime]


class BudgetAlert(Base):
    """A threshold a tenant's spend crossed in a period (written once per threshold)."""

    __tablename__ = "budget_alerts"

    tenant_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    period_start: Mapped[date] = mapped_column(Date, primary_key=True)
    threshold_pct: Mapped[int] = mapped_column(Integer, primary_key=True)
    spend_micros: Mapped[int] = mapped_column(BigInteger)
    amount_micros: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime]


ADMIN_ROLES = ("admin", "finance")


class AdminToken(Base):
    """A token for the admin API, stored as its HMAC only, with a role."""

    __tablename__ = "admin_tokens"
    __table_args__ = (CheckConstraint(_in_list("role", ADMIN_ROLES), name="role"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]


class AuditRecord(Base):
    """Who changed what, when: one row per admin change, written in the change's transaction."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_at", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime]
    actor: Mapped[str] = mapped_column(String(200))  # admin token name (id), or "bootstrap"
    action: Mapped[str] = mapped_column(String(64))  # e.g. "tenant.create", "key.revoke"
    resource_type: Mapped[str] = mapped_column(String(32))
    resource_id: Mapped[str] = mapped_column(String(200))
    tenant_id: Mapped[str | None] = mapped_column(String(36), index=True)
    before: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSON)


metadata = Base.metadata
