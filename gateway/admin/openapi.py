"""The OpenAPI 3.1 document of the admin API, generated from the operations and their schemas
(the same pydantic models the handlers validate with), so the contract cannot drift."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from gateway.admin.api import Operation

REF = "#/components/schemas/{model}"
_PARAM = re.compile(r"{([a-z_]+)(?::[a-z]+)?}")


class ErrorDetail(BaseModel):
    """OpenAI's error object."""

    message: str
    type: str
    code: str | None
    param: str | None


class ErrorBody(BaseModel):
    """Every error: `{"error": {...}}` (422 adds `errors`, one per bad field)."""

    error: ErrorDetail
    errors: list[dict[str, str]] | None = None


_ERROR_TEXT = {
    400: "Malformed request",
    401: "No valid admin token",
    403: "The token's role may not do this",
    404: "No such resource",
    409: "Conflicts with the current state",
    412: "If-Match does not match the current ETag",
    422: "Invalid body or query (field-level errors)",
    429: "Too many failed admin authentications from this address (see Retry-After)",
}


def build_openapi(operations: Sequence[Operation], *, prefix: str = "/admin/v1") -> dict[str, Any]:
    """The document, as a JSON-ready dict."""
    # Bodies as they are validated, responses as they are serialized (e.g. a Decimal is sent
    # as a string); a model whose two forms differ gets two schemas (`-Input`, `-Output`).
    wanted: dict[tuple[type[BaseModel], JsonSchemaMode], None] = {
        (ErrorBody, "serialization"): None
    }
    for op in operations:
        if op.body is not None:
            wanted[(op.body, "validation")] = None
        if op.response is not None:
            wanted[(op.response, "serialization")] = None
    refs, schemas = models_json_schema(list(wanted), ref_template=REF)
    error_ref = refs[(ErrorBody, "serialization")]
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        path = _PARAM.sub(r"{\1}", prefix + op.path)
        parameters = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in _PARAM.findall(op.path)
        ]
        if op.query is not None:
            query_schema = op.query.model_json_schema()
            required = set(query_schema.get("required", ()))
            for name, prop in query_schema.get("properties", {}).items():
                parameters.append(
                    {
                        "name": name,
                        "in": "query",
                        "required": name in required,
                        "schema": _inline(prop),
                    }
                )
        responses: dict[str, Any] = {}
        if op.status == 204:
            responses["204"] = {"description": "Done"}
        else:
            content: dict[str, Any] = {
                "application/json": {
                    "schema": refs[(op.response, "serialization")]
                    if op.response is not None
                    else {"type": "object"}
                }
            }
            if op.csv:
                content["text/csv"] = {"schema": {"type": "string"}}
            responses[str(op.status)] = {"description": op.summary, "content": content}
        error_codes = {400, 401, 403, 429, *op.errors}
        if op.body is not None or op.query is not None:
            error_codes.add(422)
        for code in sorted(error_codes):
            responses[str(code)] = {
                "description": _ERROR_TEXT.get(code, "Error"),
                "content": {"application/json": {"schema": error_ref}},
            }
        operation: dict[str, Any] = {
            "summary": op.summary,
            "operationId": f"{op.method.lower()}_{op.handler.__name__}",
            "tags": [op.tag],
            "parameters": parameters,
            "responses": responses,
            "x-roles": sorted(op.roles),
        }
        if op.body is not None:
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": refs[(op.body, "validation")]}},
            }
        paths.setdefault(path, {})[op.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "LLM gateway admin API",
            "version": "1",
            "description": "Tenants, keys, limits, budgets, prices, usage and the audit log. "
            "Send an admin token as `Authorization: Bearer`; `finance` tokens may only read "
            "usage, prices and budgets.",
        },
        "servers": [{"url": "/"}],
        "security": [{"adminToken": []}],
        "paths": paths,
        "components": {
            "schemas": schemas.get("$defs", {}),
            "securitySchemes": {"adminToken": {"type": "http", "scheme": "bearer"}},
        },
    }


def _inline(prop: dict[str, Any]) -> dict[str, Any]:
    """A query parameter's schema without pydantic's titles, nor the `null` of an optional
    field (a query value is a string or absent, never null)."""
    schema = {k: v for k, v in prop.items() if k != "title"}
    options = [o for o in schema.get("anyOf", ()) if o != {"type": "null"}]
    if "anyOf" in schema and len(options) == 1:
        del schema["anyOf"]
        schema |= options[0]
    if schema.get("default", ...) is None:
        del schema["default"]
    return schema
