"""SIMULATOR: a fake OpenAI/Mistral-compatible upstream. It runs no model.

The gateway's built-in stand-in for La Plateforme or a vLLM server, used by tests, demos and
load tests (`gateway simulate`). It is always labelled as a simulator: models are
`owned_by: "gateway-simulator"`, every response carries `x-simulator: true`, and log lines say
"simulator".

It speaks three dialects (`SimulatorOptions.style`):
- "mistral": 422 `extra_forbidden` for unknown fields (API-FACTS §1.1-1.2), usage inside the
  last content chunk of a stream, `/v1/fim/completions`, Mistral-style error bodies;
- "vllm": unknown fields ignored, `stream_options` (`include_usage`, `continuous_usage_stats`),
  `/v1/completions`, `tool_choice: "any"` → 400, `{"error": {...}}` bodies with int codes;
- "openai": like vllm, with OpenAI's string error codes and no continuous usage.

Answers are deterministic pseudo-text seeded by the prompt. Token counts are honest: prompt
tokens come from the same `TokenCounter` the gateway uses, and the completion is built from
pieces of exactly one token each, so `usage` is what a re-tokenisation of the output gives.

Faults, for testing the gateway's failure handling: `fail_rate`/`fail_status` options,
per-request `x-sim-*` headers, and a FIFO queue programmed through `POST /_sim/faults` (the
gateway does not forward client headers). `GET /_sim/requests` shows what the gateway sent.

Failure mode: this package *is* the failure injector. A fault that cuts a stream raises
`SimulatedDrop` inside the body iterator; `SimulatorEdge` stops the response there, unfinished,
and uvicorn closes the connection (logging "ASGI callable returned without completing response",
which is expected). Hangs wait until the client gives up or `serve_simulator` is cancelled.

Modules, in request order: `options` (SimulatorOptions), `app` (routes, request log, control
API, `SimulatorEdge`), `faults` (queue, headers, fail_rate), `validation` (what each style
accepts), `endpoints` (chat, FIM, completions, embeddings), `answers` (deterministic text,
tool calls, vectors), `wire` (bodies and SSE chunks per style), `delivery` (pacing, hangs,
drops), `errors` (SimError and its body per style), `metrics` (vLLM-style `GET /metrics`:
requests in flight as `vllm:num_requests_running`), `server` (uvicorn).
"""

from gateway.upstream.simulated.answers import embedding_vector
from gateway.upstream.simulated.app import (
    SimulatorEdge,
    create_simulator_app,
    credential_fingerprint,
)
from gateway.upstream.simulated.errors import SimError, render_error
from gateway.upstream.simulated.faults import Fault, SimulatedDrop, parse_faults
from gateway.upstream.simulated.options import OWNED_BY, SimulatorOptions, Style
from gateway.upstream.simulated.server import run_simulator, serve_simulator
from gateway.upstream.simulated.validation import (
    MISTRAL_CHAT_FIELDS,
    MISTRAL_EMBEDDING_FIELDS,
    MISTRAL_FIM_FIELDS,
)

__all__ = [
    "MISTRAL_CHAT_FIELDS",
    "MISTRAL_EMBEDDING_FIELDS",
    "MISTRAL_FIM_FIELDS",
    "OWNED_BY",
    "Fault",
    "SimError",
    "SimulatedDrop",
    "SimulatorEdge",
    "SimulatorOptions",
    "Style",
    "create_simulator_app",
    "credential_fingerprint",
    "embedding_vector",
    "parse_faults",
    "render_error",
    "run_simulator",
    "serve_simulator",
]
