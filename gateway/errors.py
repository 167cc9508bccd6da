"""The error tree and its OpenAI rendering.

```
GatewayError
├── ClientError                 4xx: the caller can fix the request
│   ├── InvalidRequest          400 invalid_request_error
│   ├── Unauthenticated         401 authentication_error / invalid_api_key
│   ├── PermissionDenied        403 permission_error
│   ├── ModelNotFound           404 invalid_request_error / model_not_found
│   ├── NotFound                404 invalid_request_error / not_found (unknown route)
│   ├── MethodNotAllowed        405 invalid_request_error / method_not_allowed
│   ├── RequestTimeout          408 invalid_request_error / request_timeout (a trickled body)
│   ├── RequestTooLarge         413 invalid_request_error / request_too_large
│   ├── RateLimited             429 rate_limit_error / rate_limit_exceeded (+ retry_after_s)
│   └── BudgetExhausted         429 insufficient_quota / insufficient_quota
├── UpstreamError               the deployment failed or refused      -- retryable: per class
│   ├── UpstreamRejected        the vendor's status passed through (its 4xx/5xx body normalised)
│   ├── UpstreamTimeout         504 timeout / upstream_timeout
│   ├── UpstreamInterrupted     502 api_error / upstream_interrupted (the stream broke mid-way)
│   └── UpstreamUnavailable     502 api_error / upstream_unavailable
└── DependencyUnavailable       503 our own dependency is down
    ├── LimiterUnavailable      503 limiter_unavailable
    └── LedgerUnavailable       503 ledger_unavailable
```

Each class carries its HTTP status, OpenAI `type`, `code` and default `param` as class
attributes; the message is formatted once, at construction. `web/errors.py` renders them.
Errors are logged by the edge that handles them, never where they are built.
"""

from __future__ import annotations

from typing import ClassVar

import orjson


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""

    status: ClassVar[int] = 500
    type: ClassVar[str] = "api_error"
    code: ClassVar[str | None] = "internal_error"
    retryable: ClassVar[bool] = False

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def headers(self) -> dict[str, str]:
        """Extra response headers this error implies (Retry-After and friends)."""
        return {}

    def body(self) -> bytes:
        """The OpenAI-format error body."""
        return render_error_body(self.message, self.type, self.code, self.param)


def render_error_body(message: str, type_: str, code: str | None, param: str | None) -> bytes:
    """`{"error": {"message", "type", "code", "param"}}` as JSON bytes."""
    return orjson.dumps(
        {"error": {"message": message, "type": type_, "code": code, "param": param}}
    )


class ClientError(GatewayError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class InvalidRequest(ClientError):
    status = 400
    code = "invalid_request"


class Unauthenticated(ClientError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"

    def headers(self) -> dict[str, str]:
        return {"www-authenticate": 'Bearer realm="gateway"'}


class PermissionDenied(ClientError):
    status = 403
    type = "permission_error"
    code = "permission_denied"


class ModelNotFound(ClientError):
    status = 404
    code = "model_not_found"

    def __init__(self, model: str) -> None:
        super().__init__(
            f"The model `{model}` does not exist or you do not have access to it.", param="model"
        )
        self.model = model


class NotFound(ClientError):
    status = 404
    code = "not_found"


class MethodNotAllowed(ClientError):
    status = 405
    code = "method_not_allowed"


class RequestTimeout(ClientError):
    status = 408
    code = "request_timeout"

    def __init__(self, limit_s: float) -> None:
        super().__init__(f"The request body did not arrive within {limit_s:g} s; send it at once.")


class RequestTooLarge(ClientError):
    status = 413
    code = "request_too_large"

    def __init__(self, limit_bytes: int) -> None:
        super().__init__(
            f"Request body is larger than the gateway's limit of {limit_bytes} bytes; "
            "send a smaller request."
        )
        self.limit_bytes = limit_bytes


class RateLimited(ClientError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(
        self,
        message: str,
        *,
        retry_after_s: float | None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.extra_headers = headers or {}

    def headers(self) -> dict[str, str]:
        """`retry_after_s` None means it can never succeed: tell SDKs not to retry."""
        if self.retry_after_s is None:
            return {**self.extra_headers, "x-should-retry": "false"}
        # Retry-After is whole seconds (rounded up so a client never comes back too early);
        # retry-after-ms is exact (rounded up too) for the SDKs that read it.
        whole_s = max(1, -int(-self.retry_after_s // 1))
        exact_ms = max(1, -int(-self.retry_after_s * 1000 // 1))
        return {
            **self.extra_headers,
            "retry-after": str(whole_s),
            "retry-after-ms": str(exact_ms),
        }


class BudgetExhausted(ClientError):
    """A hard budget would be crossed: waiting does not help, so clients must not retry."""

    status = 429
    type = "insufficient_quota"
    code = "insufficient_quota"
    extra_headers: dict[str, str] | None = None  # the budget's state, when known

    def headers(self) -> dict[str, str]:
        return {**(self.extra_headers or {}), "x-should-retry": "false"}


class UpstreamError(GatewayError):
    status = 502
    type = "api_error"
    code = "upstream_error"

    def __init__(self, message: str, *, deployment: str | None = None) -> None:
        super().__init__(message)
        self.deployment = deployment


class UpstreamRejected(UpstreamError):
    """The upstream answered with an error status; its status is kept, its body normalised."""

    RETRYABLE_STATUSES: ClassVar[frozenset[int]] = frozenset({429, 502, 503, 504})

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str,
        code: str | None,
        param: str | None = None,
        deployment: str | None = None,
        retry_after: str | None = None,
    ) -> None:
        super().__init__(message, deployment=deployment)
        self.status = status  # type: ignore[misc]  # instance value shadows the class default
        self.type = type_  # type: ignore[misc]
        self.code = code  # type: ignore[misc]
        self.param = param
        self.retry_after = retry_after
        self.retryable = status in self.RETRYABLE_STATUSES  # type: ignore[misc]

    def headers(self) -> dict[str, str]:
        return {"retry-after": self.retry_after} if self.retry_after else {}


class UpstreamTimeout(UpstreamError):
    status = 504
    type = "timeout"
    code = "upstream_timeout"
    retryable = True


class UpstreamInterrupted(UpstreamError):
    """The upstream stream broke after the response started; never retried (bytes were sent)."""

    status = 502
    type = "api_error"
    code = "upstream_interrupted"


class UpstreamUnavailable(UpstreamError):
    status = 502
    type = "api_error"
    code = "upstream_unavailable"
    retryable = True


class DependencyUnavailable(GatewayError):
    status = 503
    type = "api_error"
    code = "service_unavailable"


class LimiterUnavailable(DependencyUnavailable):
    code = "limiter_unavailable"


class LedgerUnavailable(DependencyUnavailable):
    code = "ledger_unavailable"
