"""SIMULATOR faults: programmed misbehaviour, from the queue, `x-sim-*` headers or `fail_rate`.

A fault comes from three places, in this order of precedence: the request's `x-sim-*` headers,
the first matching fault queued through `POST /_sim/faults` (FIFO, one consumed per matching
request), and `SimulatorOptions.fail_rate` (a seeded coin, only when no status is set yet).
Header names are the field names with `-` for `_` (`x-sim-drop-after-chunks`).

Streams that never end, for the gateway's stream deadlines: `endless` keeps sending content
chunks (paced by `token_delay_ms`, at least `ENDLESS_MIN_DELAY_MS` apart) and never a finish,
usage or `[DONE]`; `stall_after_chunks` sends that many chunks, then nothing, until the client
leaves. Usage faults: `omit` (no usage anywhere), `wrong` (+1000 each), `negative` (below zero)
and `absurd` (`ABSURD_TOKENS` each: more than any context, and than a 32-bit column holds).
A redirect, for the gateway's egress guard: `status` 3xx with `location` answers that status
with `Location: <location>` (and a small JSON body naming it); 3xx is refused without one.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from gateway.upstream.simulated.errors import SimError
from gateway.upstream.simulated.options import SimulatorOptions

HANGS = ("before_headers", "after_headers")
USAGE_FAULTS = ("omit", "wrong", "negative", "absurd")
ABSURD_TOKENS = 10**10
ENDLESS_MIN_DELAY_MS = 5.0  # an endless stream never spins the simulator's event loop


def _flag(value: Any) -> bool:
    """A boolean from JSON (`true`) or a header (`"true"`, `"1"`)."""
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("true", "1", "yes"):
        return True
    if str(value).lower() in ("false", "0", "no"):
        return False
    raise ValueError(f"not a boolean: {value!r}")


# Every fault field and how to read it; numbers may arrive as strings ("retry_after": "2").
_KINDS: dict[str, Callable[[Any], Any]] = {
    "status": int,
    "retry_after": float,
    "drop_after_chunks": int,
    "stall_after_chunks": int,
    "endless": _flag,
    "hang": str,
    "usage": str,
    "ttft_ms": float,
    "token_delay_ms": float,
    "location": str,
    "path": str,
    "model": str,
}
_HEADER_FIELDS = tuple(name for name in _KINDS if name not in ("path", "model"))


@dataclass(frozen=True)
class Fault:
    """One programmed misbehaviour; `path`/`model`, when set, restrict which request takes it."""

    status: int | None = None
    retry_after: float | None = None
    drop_after_chunks: int | None = None
    stall_after_chunks: int | None = None
    endless: bool | None = None
    hang: str | None = None
    usage: str | None = None
    ttft_ms: float | None = None
    token_delay_ms: float | None = None
    location: str | None = None
    path: str | None = None
    model: str | None = None

    def matches(self, path: str, model: str | None) -> bool:
        """Whether a queued fault applies to this request."""
        return (self.path is None or self.path == path) and (
            self.model is None or self.model == model
        )

    def overlaid(self, other: Fault) -> Fault:
        """This fault with every field `other` sets taking precedence."""
        changes = {f.name: getattr(other, f.name) for f in fields(other)}
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


class SimulatedDrop(Exception):
    """Raised inside a response body on purpose, so the server resets the connection."""


def _read_fault(values: Mapping[str, Any]) -> Fault:
    """A checked fault from raw field values (None means unset); ValueError if malformed."""
    fault = Fault(**{k: None if v is None else _KINDS[k](v) for k, v in values.items()})
    if fault.hang is not None and fault.hang not in HANGS:
        raise ValueError(f"hang must be one of {HANGS}")
    if fault.usage is not None and fault.usage not in USAGE_FAULTS:
        raise ValueError(f"usage must be one of {USAGE_FAULTS}")
    redirect = fault.status is not None and 300 <= fault.status <= 399 and bool(fault.location)
    if fault.status is not None and not (400 <= fault.status <= 599 or redirect):
        raise ValueError("status must be a 4xx or 5xx code, or a 3xx with a location")
    return fault


def parse_faults(payload: Any) -> list[Fault]:
    """Fault objects from a `POST /_sim/faults` body (one object or a list of them)."""
    items = payload if isinstance(payload, list) else [payload]
    faults = []
    for item in items:
        if not isinstance(item, dict) or not set(item) <= set(_KINDS):
            raise ValueError(f"a fault is an object with keys from {sorted(_KINDS)}: {item!r}")
        faults.append(_read_fault(item))
    return faults


def header_fault(headers: Mapping[str, str]) -> Fault:
    """The fault described by a request's `x-sim-*` headers (all fields None if none)."""
    values = {name: headers.get("x-sim-" + name.replace("_", "-")) for name in _HEADER_FIELDS}
    try:
        return _read_fault(values)
    except ValueError as exc:
        raise SimError(400, f"bad x-sim-* header: {exc}") from exc


def take_fault(queue: deque[Fault], path: str, model: str | None) -> Fault | None:
    """Pop the first queued fault that matches this request."""
    for index, fault in enumerate(queue):
        if fault.matches(path, model):
            del queue[index]
            return fault
    return None


def next_fault(
    queue: deque[Fault],
    headers: Mapping[str, str],
    path: str,
    model: str | None,
    options: SimulatorOptions,
    rng: random.Random,
) -> Fault:
    """The fault this request takes: queued, overlaid by headers, else maybe `fail_rate`."""
    fault = take_fault(queue, path, model) or Fault()
    fault = fault.overlaid(header_fault(headers))
    rate = options.fail_rate
    if fault.status is None and rate > 0 and rng.random() < rate:
        fault = replace(fault, status=options.fail_status)
    return fault


def status_error(fault: Fault) -> SimError | None:
    """The error response of a status fault (with `Retry-After` when set), or None."""
    if fault.status is None:
        return None
    headers = {}
    if fault.retry_after is not None:
        headers["Retry-After"] = f"{fault.retry_after:g}"
    if fault.location is not None:
        headers["Location"] = fault.location
        body = {"simulated_redirect": fault.location}
        return SimError(fault.status, "simulated redirect", headers=headers, body=body)
    return SimError(fault.status, f"simulated fault: status {fault.status}", headers=headers)
