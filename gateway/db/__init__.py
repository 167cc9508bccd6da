"""The database layer: engine, schema, and one query module per table.

Public surface: `make_engine`, `make_sessionmaker`, `translate_db_errors` and the models;
queries live in `gateway.db.tenants` and `gateway.db.keys`, migrations in `gateway.db.migrate`.
"""

from gateway.db.engine import make_engine, make_sessionmaker, translate_db_errors
from gateway.db.tables import ApiKey, Base, Tenant, metadata

__all__ = [
    "ApiKey",
    "Base",
    "Tenant",
    "make_engine",
    "make_sessionmaker",
    "metadata",
    "translate_db_errors",
]
