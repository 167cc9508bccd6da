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
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    CheckConstraint,
    DateTime,
    Dialect,
    ForeignKey,
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


metadata = Base.metadata
