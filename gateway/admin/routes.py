"""The admin API's route table: every resource's operations, and the OpenAPI document."""

from __future__ import annotations

from starlette.routing import Route

from gateway.admin import (
    admin_tokens,
    audit_log,
    budgets,
    keys,
    limits,
    prices,
    reconciliation,
    statements_api,
    tenants,
    usage,
)
from gateway.admin.api import READERS, Call, Operation, Reply, mount
from gateway.admin.openapi import build_openapi

RESOURCES = (
    tenants,
    keys,
    limits,
    budgets,
    prices,
    usage,
    audit_log,
    admin_tokens,
    reconciliation,
    statements_api,
)


def operations() -> list[Operation]:
    """Every admin operation, in documentation order."""
    found = [op for module in RESOURCES for op in module.OPERATIONS]
    found.append(
        Operation(
            "GET", "/openapi.json", _openapi, "This document", "meta", roles=READERS, errors=()
        )
    )
    return found


async def _openapi(call: Call) -> Reply:
    return Reply(build_openapi(operations()))


def admin_routes() -> list[Route]:
    """Routes relative to the `/admin/v1` mount (services come from `app.state.admin`)."""
    return mount(operations())
