"""Locust scenarios that model the gateway's real traffic: several tenants, each its own mix.

Run it through the one headless command, which starts the simulated upstream, the gateway and
the tenants, then runs this file and draws the charts (loadtests/README.md):

    .venv/bin/python loadtests/scenarios/run_locust.py --timing realistic --run-time 2m

or by hand against a gateway you started (the tenants file is JSON, see `Tenant`):

    .venv/bin/locust -f loadtests/locustfile.py --headless -u 60 -r 10 -t 2m \
        --host http://127.0.0.1:8080 --tenants-file tenants.json \
        --csv out/gateway --csv-full-history --html out/report.html

What a simulated user does: it belongs to one tenant for its whole life (tenants are picked by
their `weight`) and sends that tenant's mix of requests, with a think time between them:

    interactive   short chat, mostly streamed (a chat UI)
    support       short and long chat, half streamed, some embeddings (a support assistant)
    batch         long prompts, non-streamed, and embedding batches (offline jobs)

Request kinds: `chat short` (~100-token prompt, max_tokens 128), `chat long` (~2,000-token
prompt, max_tokens 512), each streamed or not, and `embeddings` (4 texts). Every prompt is new
(a counter in the text), as real traffic is, so the gateway's token-count cache never hides the
tokenizer's cost.

Rate limits are part of the scenario: the tenants' RPM/TPM differ, so the tight ones get 429s.
A user that gets a 429 honours it as the OpenAI SDKs do: it waits `Retry-After` seconds (capped
by `--max-retry-after-s`) and sends the same request again, up to `--max-429-retries` times.
429s are reported under their own name (`429 <tenant>`, type `THROTTLED`), so the latency rows
of each request kind hold answers only; a request that is still refused after its retries
counts as a failure. Streams report two extra rows: `TTFT <kind>` (time to the first content
event) and the stream's whole duration as the kind's own row.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from locust import HttpUser, between, events, task

SHORT_WORDS = 30  # ~100 prompt tokens with the system prompt (Tekken v3)
LONG_WORDS = 1760  # ~2,000 prompt tokens
_VOCABULARY_TEXT = (
    "the gateway routes each request to a deployment in the tenant region and counts the prompt "
    "tokens before it reserves them against the bucket limits while the upstream model streams "
    "an answer back chunk by chunk and the ledger records usage cost latency errors retries "
    "fallbacks budgets quotas keys invoices customers orders shipments refunds parcel delivery"
)
_VOCABULARY = _VOCABULARY_TEXT.split()
SYSTEM = (
    "You are a support assistant for an online shop. Answer briefly and politely, cite the "
    "order number when there is one, and hand over to a human agent for legal matters."
)
# request kind -> weight, per tenant profile
MIXES: dict[str, dict[str, int]] = {
    "interactive": {"chat short stream": 6, "chat short": 2, "chat long stream": 1},
    "support": {
        "chat short": 3,
        "chat short stream": 3,
        "chat long": 1,
        "chat long stream": 1,
        "embeddings": 2,
    },
    "batch": {"chat long": 4, "embeddings": 4, "chat short": 2},
}
_counter = itertools.count(1)


@dataclass(frozen=True)
class Tenant:
    """One entry of the tenants file: `{"name", "key", "weight", "profile"}`."""

    name: str
    key: str
    weight: int
    profile: str


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    parser.add_argument(
        "--tenants-file",
        default=os.environ.get("LOADTEST_TENANTS_FILE", "tenants.json"),
        help="JSON list of tenants: name, key, weight, profile (interactive|support|batch)",
    )
    parser.add_argument("--model", default="mistral-small-latest")
    parser.add_argument("--embed-model", default="mistral-embed")
    parser.add_argument("--max-429-retries", type=int, default=3)
    parser.add_argument("--max-retry-after-s", type=float, default=20.0)


_tenants: list[Tenant] = []
_assigned = itertools.count()


@events.test_start.add_listener
def _load_tenants(environment: Any, **_: Any) -> None:
    path = Path(environment.parsed_options.tenants_file)
    _tenants[:] = [Tenant(**entry) for entry in json.loads(path.read_text())]
    unknown = {t.profile for t in _tenants} - MIXES.keys()
    if unknown:
        raise ValueError(f"{path}: unknown profiles {sorted(unknown)}; known: {sorted(MIXES)}")


def _pick_tenant() -> Tenant:
    """Tenants in proportion to their weights, deterministic in the order users start."""
    wheel = [t for t in _tenants for _ in range(max(1, t.weight))]
    return wheel[next(_assigned) % len(wheel)]


def _text(words: int, rng: random.Random) -> str:
    return " ".join(rng.choice(_VOCABULARY) for _ in range(words))


class TenantUser(HttpUser):
    """A client application of one tenant."""

    wait_time = between(0.5, 2.0)

    def on_start(self) -> None:
        self.tenant = _pick_tenant()
        self.rng = random.Random(hash(self.tenant.name) ^ id(self))
        mix = MIXES[self.tenant.profile]
        self.kinds = list(mix)
        self.weights = [mix[k] for k in self.kinds]
        self.headers = {"authorization": f"Bearer {self.tenant.key}"}
        options = self.environment.parsed_options
        self.model, self.embed_model = options.model, options.embed_model
        self.max_retries, self.max_wait_s = options.max_429_retries, options.max_retry_after_s

    @task
    def one_request(self) -> None:
        kind = self.rng.choices(self.kinds, self.weights)[0]
        if kind == "embeddings":
            inputs = [f"doc {next(_counter)}: {_text(40, self.rng)}" for _ in range(4)]
            self._send(kind, "/v1/embeddings", {"model": self.embed_model, "input": inputs})
            return
        long = kind.startswith("chat long")
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [
                {"role": "system", "content": SYSTEM},
                {
                    "role": "user",
                    "content": f"Ticket {next(_counter)}: "
                    + _text(LONG_WORDS if long else SHORT_WORDS, self.rng),
                },
            ],
            "max_tokens": 512 if long else 128,
        }
        if kind.endswith("stream"):
            body["stream"] = True
        self._send(kind, "/v1/chat/completions", body)

    def _send(self, kind: str, path: str, body: dict[str, Any]) -> None:
        """Send, honouring 429 Retry-After up to the retry cap."""
        stream = body.get("stream") is True
        for attempt in range(self.max_retries + 1):
            started = time.perf_counter()
            with self.client.post(
                path,
                json=body,
                headers=self.headers,
                name=kind,
                stream=stream,
                catch_response=True,
            ) as response:
                if response.status_code == 429:
                    wait_s = _retry_after_s(response.headers)
                    last = attempt == self.max_retries
                    if last:
                        response.failure(f"429 after {attempt} retries ({self.tenant.name})")
                        return
                    response.request_meta["name"] = f"429 {self.tenant.name}"
                    response.request_meta["request_type"] = "THROTTLED"
                    response.success()
                elif response.status_code != 200:
                    response.failure(f"{response.status_code}: {response.text[:200]}")
                    return
                else:
                    if stream:
                        self._consume_stream(kind, response, started)
                    else:
                        response.success()
                    return
            time.sleep(min(wait_s, self.max_wait_s))

    def _consume_stream(self, kind: str, response: Any, started: float) -> None:
        """Read the SSE stream to its end; TTFT is the first event with content."""
        first_s: float | None = None
        done = False
        for line in response.iter_lines():
            if not line.startswith(b"data: "):
                continue
            data = line[6:]
            if data == b"[DONE]":
                done = True
                break
            if first_s is None and b'"content":"' in data and b'"content":""' not in data:
                first_s = time.perf_counter() - started
            if b'"error"' in data[:20]:
                response.failure(f"stream error event: {data[:200]!r}")
                return
        total_ms = (time.perf_counter() - started) * 1000
        response.request_meta["response_time"] = total_ms  # the whole stream, not the headers
        if not done:
            response.failure("stream ended without [DONE]")
            return
        response.success()
        if first_s is not None:
            events.request.fire(
                request_type="TTFT",
                name=f"TTFT {kind}",
                response_time=first_s * 1000,
                response_length=0,
                exception=None,
                context={},
            )


def _retry_after_s(headers: Any) -> float:
    value = headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else 1.0
    except ValueError:
        return 1.0  # an HTTP date: not sent by this gateway; wait a second
