"""The simulated upstream: honest usage, per-style quirks, streams, tool calls, faults."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import struct
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from starlette.applications import Starlette

from gateway.upstream.simulated import (
    SimulatorOptions,
    create_simulator_app,
    embedding_vector,
    serve_simulator,
)
from gateway.upstream.simulated.faults import ABSURD_TOKENS
from gateway.upstream.tokenizer import TokenCounter
from tests.services import free_port

MODEL = "mistral-small-latest"
CHAT = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Say something about gateways."},
]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]


@contextlib.asynccontextmanager
async def sim_client(**options: Any) -> AsyncIterator[httpx.AsyncClient]:
    app = create_simulator_app(SimulatorOptions(**options))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://sim") as client:
        yield client


def sim_app(client: httpx.AsyncClient) -> Starlette:
    return client._transport.app  # type: ignore[attr-defined]


def events(text: str) -> list[dict[str, Any]]:
    """The JSON chunks of an SSE body; asserts the [DONE] terminator."""
    frames = [frame for frame in text.split("\n\n") if frame]
    assert frames[-1] == "data: [DONE]"
    assert all(frame.startswith("data: ") for frame in frames)
    return [orjson.loads(frame[6:]) for frame in frames[:-1]]


def streamed_text(chunks: list[dict[str, Any]]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


# -- honest usage --------------------------------------------------------------------------------


@pytest.mark.parametrize("style", ["mistral", "vllm", "openai"])
async def test_chat_usage_is_the_gateway_tokenizer_count(style: str) -> None:
    async with sim_client(style=style) as client:
        response = await client.post(
            "/v1/chat/completions", json={"model": MODEL, "messages": CHAT, "max_tokens": 5}
        )
        again = await client.post(
            "/v1/chat/completions", json={"model": MODEL, "messages": CHAT, "max_tokens": 5}
        )
    assert response.status_code == 200
    assert response.headers["x-simulator"] == "true"
    body = response.json()
    counter = TokenCounter.for_model(MODEL)
    content = body["choices"][0]["message"]["content"]
    assert body["object"] == "chat.completion"
    assert body["usage"] == {
        "prompt_tokens": counter.count_chat(CHAT).tokens,
        "completion_tokens": 5,
        "total_tokens": counter.count_chat(CHAT).tokens + 5,
    }
    assert counter.count_text(content).tokens == 5
    assert body["choices"][0]["finish_reason"] == "length"  # max_tokens < output_tokens
    assert again.json()["choices"] == body["choices"]  # same prompt, same answer


async def test_default_length_and_tools_in_the_prompt_count() -> None:
    async with sim_client(output_tokens=9) as client:
        response = await client.post(
            "/v1/chat/completions", json={"model": MODEL, "messages": CHAT, "tools": TOOLS}
        )
    body = response.json()
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens"] == 9
    assert (
        body["usage"]["prompt_tokens"]
        == TokenCounter.for_model(MODEL).count_chat(CHAT, TOOLS).tokens
    )


async def test_json_mode_answers_json_with_an_honest_count() -> None:
    async with sim_client() as client:
        body = {"model": MODEL, "messages": CHAT, "response_format": {"type": "json_object"}}
        response = (await client.post("/v1/chat/completions", json=body)).json()
    content = response["choices"][0]["message"]["content"]
    assert isinstance(orjson.loads(content), dict)
    assert (
        response["usage"]["completion_tokens"]
        == TokenCounter.for_model(MODEL).count_text(content).tokens
    )


# -- Mistral strictness and error shapes ----------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("stream_options", {"include_usage": True}),
        ("seed", 7),
        ("max_completion_tokens", 32000),
        ("user", "u-1"),
    ],
)
async def test_mistral_style_rejects_openai_only_fields_with_422(field: str, value: Any) -> None:
    async with sim_client(style="mistral") as client:
        body = {"model": MODEL, "messages": CHAT, field: value}
        response = await client.post("/v1/chat/completions", json=body)
    assert response.status_code == 422
    assert response.json() == {
        "object": "error",
        "message": {
            "detail": [
                {
                    "type": "extra_forbidden",
                    "loc": ["body", field],
                    "msg": "Extra inputs are not permitted",
                    "input": value,
                }
            ]
        },
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }


async def test_mistral_style_accepts_its_own_fields() -> None:
    body = {
        "model": MODEL,
        "messages": CHAT,
        "random_seed": 1,
        "safe_prompt": False,
        "prompt_mode": None,
        "top_k": 5,
        "service_tier": "auto",
        "parallel_tool_calls": True,
    }
    async with sim_client(style="mistral") as client:
        assert (await client.post("/v1/chat/completions", json=body)).status_code == 200


@pytest.mark.parametrize("style", ["vllm", "openai"])
async def test_openai_compatible_styles_accept_openai_fields(style: str) -> None:
    body = {"model": MODEL, "messages": CHAT, "seed": 1, "user": "u", "max_completion_tokens": 3}
    async with sim_client(style=style) as client:
        response = await client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200
    assert response.json()["usage"]["completion_tokens"] == 3


async def test_unknown_model_is_404_in_each_style() -> None:
    body = {"model": "nope", "messages": CHAT}
    async with sim_client(style="mistral") as client:
        mistral = await client.post("/v1/chat/completions", json=body)
    async with sim_client(style="vllm") as client:
        vllm = await client.post("/v1/chat/completions", json=body)
    assert mistral.status_code == vllm.status_code == 404
    assert mistral.json() == {
        "object": "error",
        "message": "Invalid model: nope",
        "type": "invalid_request_error",
        "param": "model",
        "code": "unknown_model",
    }
    assert vllm.json()["error"] | {"message": ""} == {
        "message": "",
        "type": "NotFoundError",
        "param": "model",
        "code": 404,
    }


async def test_bad_messages_are_422_for_mistral_and_400_for_vllm() -> None:
    body = {"model": MODEL, "messages": "hi"}
    async with sim_client(style="mistral") as client:
        mistral = await client.post("/v1/chat/completions", json=body)
    async with sim_client(style="vllm") as client:
        vllm = await client.post("/v1/chat/completions", json=body)
    assert mistral.status_code == 422
    assert mistral.json()["message"]["detail"][0]["loc"] == ["body", "messages"]
    assert vllm.status_code == 400 and vllm.json()["error"]["code"] == 400


async def test_api_key_is_required_when_configured() -> None:
    async with sim_client(api_key="sk-sim") as client:
        refused = await client.post("/v1/chat/completions", json={"model": MODEL, "messages": CHAT})
        allowed = await client.post(
            "/v1/chat/completions",
            json={"model": MODEL, "messages": CHAT},
            headers={"authorization": "Bearer sk-sim"},
        )
        log = (await client.get("/_sim/requests")).json()
    assert refused.status_code == 401
    assert refused.json()["object"] == "error" and refused.json()["type"] == "authentication_error"
    assert allowed.status_code == 200
    assert [entry["had_auth"] for entry in log] == [False, True]
    assert "sk-sim" not in orjson.dumps(log).decode()


# -- streams -------------------------------------------------------------------------------------


async def test_mistral_stream_puts_usage_in_the_last_content_chunk() -> None:
    body = {"model": MODEL, "messages": CHAT, "max_tokens": 4}
    async with sim_client(style="mistral") as client:
        whole = (await client.post("/v1/chat/completions", json=body)).json()
        response = await client.post("/v1/chat/completions", json=body | {"stream": True})
    assert response.headers["content-type"].startswith("text/event-stream")
    chunks = events(response.text)
    assert len(chunks) == 1 + 4  # a role chunk, then one token per chunk
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert [("usage" in c) for c in chunks] == [False] * 4 + [True]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["usage"] == whole["usage"]
    assert streamed_text(chunks) == whole["choices"][0]["message"]["content"]


@pytest.mark.parametrize("style", ["vllm", "openai"])
async def test_openai_style_streams_report_usage_only_when_asked(style: str) -> None:
    body = {"model": MODEL, "messages": CHAT, "max_tokens": 3, "stream": True}
    async with sim_client(style=style) as client:
        silent = events((await client.post("/v1/chat/completions", json=body)).text)
        asked = events(
            (
                await client.post(
                    "/v1/chat/completions", json=body | {"stream_options": {"include_usage": True}}
                )
            ).text
        )
    assert all("usage" not in c for c in silent)
    assert all(c["choices"] for c in silent)
    assert asked[-1]["choices"] == []
    assert asked[-1]["usage"]["completion_tokens"] == 3
    assert all("usage" not in c for c in asked[:-1])
    assert asked[-2]["choices"][0]["finish_reason"] == "length"


async def test_vllm_continuous_usage_stats_rides_on_every_chunk() -> None:
    options = {"include_usage": True, "continuous_usage_stats": True}
    body = {"model": MODEL, "messages": CHAT, "max_tokens": 3, "stream": True}
    async with sim_client(style="vllm") as client:
        response = await client.post(
            "/v1/chat/completions", json=body | {"stream_options": options}
        )
    chunks = events(response.text)
    assert [c["usage"]["completion_tokens"] for c in chunks] == [0, 1, 2, 3, 3]
    assert chunks[-1]["choices"] == []


# -- tool calls ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("style", "choice"), [("mistral", "any"), ("vllm", "required")])
async def test_forced_tool_choice_answers_with_a_tool_call(style: str, choice: str) -> None:
    body = {"model": MODEL, "messages": CHAT, "tools": TOOLS, "tool_choice": choice}
    async with sim_client(style=style) as client:
        response = (await client.post("/v1/chat/completions", json=body)).json()
        streamed = events(
            (await client.post("/v1/chat/completions", json=body | {"stream": True})).text
        )
    choice0 = response["choices"][0]
    assert choice0["finish_reason"] == "tool_calls"
    [call] = choice0["message"]["tool_calls"]
    assert len(call["id"]) == 9 and call["id"].isalnum()
    assert call["type"] == "function" and call["function"]["name"] == "get_weather"
    assert orjson.loads(call["function"]["arguments"]) == {"city": "simulated"}
    assert response["usage"]["completion_tokens"] > 0
    assert streamed[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert streamed[-1]["choices"][0]["delta"]["tool_calls"][0]["id"] == call["id"]


async def test_vllm_refuses_tool_choice_any() -> None:
    body = {"model": MODEL, "messages": CHAT, "tools": TOOLS, "tool_choice": "any"}
    async with sim_client(style="vllm") as client:
        response = await client.post("/v1/chat/completions", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith('Only named tools, "none", "auto"')


async def test_auto_tool_choice_answers_in_text() -> None:
    body = {"model": MODEL, "messages": CHAT, "tools": TOOLS, "tool_choice": "auto"}
    async with sim_client() as client:
        response = (await client.post("/v1/chat/completions", json=body)).json()
    assert response["choices"][0]["message"]["tool_calls"] is None
    assert response["choices"][0]["message"]["content"]


# -- embeddings, FIM, completions, models -------------------------------------------------------


async def test_embeddings_float_and_base64_agree() -> None:
    texts = ["alpha", "beta gamma"]
    async with sim_client(embedding_dim=8) as client:
        floats = (
            await client.post("/v1/embeddings", json={"model": "mistral-embed", "input": texts})
        ).json()
        packed = (
            await client.post(
                "/v1/embeddings",
                json={"model": "mistral-embed", "input": texts, "encoding_format": "base64"},
            )
        ).json()
    assert [d["index"] for d in floats["data"]] == [0, 1]
    vectors = [d["embedding"] for d in floats["data"]]
    assert vectors[0] == embedding_vector("alpha", 8) and len(vectors[1]) == 8
    assert abs(sum(v * v for v in vectors[0]) - 1) < 1e-5
    decoded = [list(struct.unpack("<8f", base64.b64decode(d["embedding"]))) for d in packed["data"]]
    assert decoded == vectors
    tokens = TokenCounter.for_model("mistral-embed").count_texts(texts).tokens
    assert floats["usage"] == {
        "prompt_tokens": tokens,
        "completion_tokens": 0,
        "total_tokens": tokens,
    }


async def test_fim_is_mistral_only_and_counts_with_encode_fim() -> None:
    body = {
        "model": "codestral-latest",
        "prompt": "def add(a, b):\n    ",
        "suffix": "\n",
        "max_tokens": 3,
    }
    async with sim_client(style="mistral") as client:
        response = await client.post("/v1/fim/completions", json=body)
    async with sim_client(style="vllm") as client:
        missing = await client.post("/v1/fim/completions", json=body)
    result = response.json()
    assert result["object"] == "chat.completion"
    assert result["choices"][0]["message"]["content"]
    fim = TokenCounter.for_model("codestral-latest").count_fim(body["prompt"], body["suffix"])
    assert result["usage"]["prompt_tokens"] == fim.tokens
    assert missing.status_code == 404


async def test_vllm_completions_take_text_or_token_ids() -> None:
    async with sim_client(style="vllm") as client:
        text = (
            await client.post(
                "/v1/completions", json={"model": MODEL, "prompt": "Once upon", "max_tokens": 2}
            )
        ).json()
        ids = (
            await client.post("/v1/completions", json={"model": MODEL, "prompt": [1, 2, 3, 4]})
        ).json()
        stream = events(
            (
                await client.post(
                    "/v1/completions",
                    json={"model": MODEL, "prompt": "x", "max_tokens": 2, "stream": True},
                )
            ).text
        )
    assert text["object"] == "text_completion" and text["choices"][0]["text"]
    assert (
        text["usage"]["prompt_tokens"]
        == TokenCounter.for_model(MODEL).count_text("Once upon").tokens + 1
    )
    assert ids["usage"]["prompt_tokens"] == 4
    assert [c["choices"][0]["finish_reason"] for c in stream] == [None, "length"]
    assert all(c["object"] == "text_completion" for c in stream)


async def test_models_health_and_labels() -> None:
    async with sim_client(models=("a-model", "mistral-embed")) as client:
        models = await client.get("/v1/models")
        health = await client.get("/health")
        unknown = await client.get("/v1/nothing")
    assert [(m["id"], m["owned_by"]) for m in models.json()["data"]] == [
        ("a-model", "gateway-simulator"),
        ("mistral-embed", "gateway-simulator"),
    ]
    assert health.status_code == 200
    assert unknown.status_code == 404 and unknown.headers["x-simulator"] == "true"


# -- faults and the control API -----------------------------------------------------------------


async def test_header_faults_status_retry_after_and_usage() -> None:
    body = {"model": MODEL, "messages": CHAT}
    async with sim_client() as client:
        limited = await client.post(
            "/v1/chat/completions",
            json=body,
            headers={"x-sim-status": "429", "x-sim-retry-after": "2"},
        )
        omitted = await client.post(
            "/v1/chat/completions", json=body, headers={"x-sim-usage": "omit"}
        )
        wrong = await client.post(
            "/v1/chat/completions", json=body, headers={"x-sim-usage": "wrong"}
        )
        honest = await client.post("/v1/chat/completions", json=body)
    assert limited.status_code == 429 and limited.headers["retry-after"] == "2"
    assert limited.json()["object"] == "error" and limited.json()["type"] == "rate_limited"
    assert "usage" not in omitted.json()
    assert wrong.json()["usage"]["prompt_tokens"] == honest.json()["usage"]["prompt_tokens"] + 1000


async def test_queued_faults_are_fifo_and_match_path_and_model() -> None:
    body = {"model": MODEL, "messages": CHAT}
    faults = [
        {"status": 503, "path": "/v1/embeddings"},
        {"status": 502, "model": "codestral-latest"},
        {"status": 429, "retry_after": "3"},
        {"usage": "omit"},
    ]
    async with sim_client() as client:
        assert (await client.post("/_sim/faults", json=faults)).json() == {"queued": 4}
        first = await client.post("/v1/chat/completions", json=body)  # takes the 429
        second = await client.post("/v1/chat/completions", json=body)  # takes usage: omit
        third = await client.post("/v1/chat/completions", json=body)  # nothing left for it
        embed = await client.post("/v1/embeddings", json={"model": "mistral-embed", "input": "x"})
        code = await client.post("/v1/chat/completions", json=body | {"model": "codestral-latest"})
        bad = await client.post("/_sim/faults", json=[{"hang": "sometimes"}])
    assert (first.status_code, first.headers["retry-after"]) == (429, "3")
    assert second.status_code == 200 and "usage" not in second.json()
    assert third.status_code == 200 and "usage" in third.json()
    assert (embed.status_code, code.status_code) == (503, 502)
    assert bad.status_code == 400


async def test_fail_rate_and_reset() -> None:
    body = {"model": MODEL, "messages": CHAT}
    async with sim_client(fail_rate=1.0, fail_status=502) as client:
        failed = await client.post("/v1/chat/completions", json=body)
        await client.post("/_sim/faults", json=[{"status": 500}])
        assert len((await client.get("/_sim/requests")).json()) == 1
        await client.post("/_sim/reset")
        log = (await client.get("/_sim/requests")).json()
        assert (
            sim_app(client).state.simulator.state.faults
            == type(sim_app(client).state.simulator.state.faults)()
        )
    assert failed.status_code == 502 and failed.json()["type"] == "server_error"
    assert log == []


async def test_request_log_records_what_was_received() -> None:
    async with sim_client() as client:
        started = time.monotonic()
        await client.post(
            "/v1/chat/completions", json={"model": MODEL, "messages": CHAT, "stream": True}
        )
        await client.post("/v1/chat/completions", json={"model": "nope", "messages": CHAT})
        await client.post(
            "/v1/chat/completions",
            json={"model": MODEL, "messages": CHAT},
            headers={"x-sim-status": "503"},
        )
        log = (await client.get("/_sim/requests")).json()
    assert [(e["model"], e["stream"], e["status"], e["outcome"]) for e in log] == [
        (MODEL, True, 200, "ok"),
        ("nope", False, 404, "error"),
        (MODEL, False, 503, "fault"),
    ]
    assert log[0]["method"] == "POST" and log[0]["path"] == "/v1/chat/completions"
    assert log[0]["body"]["messages"] == CHAT and log[0]["had_auth"] is False
    assert started <= log[0]["t_mono"] <= log[1]["t_mono"] <= log[2]["t_mono"]


# -- over a real socket --------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def live_sim() -> AsyncIterator[str]:
    """A mistral-style simulator on a real port (uvicorn in this loop); yields its base URL."""
    port = free_port()
    task = asyncio.create_task(serve_simulator("127.0.0.1", port, SimulatorOptions()))
    base = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient() as client:
        for _ in range(200):
            with contextlib.suppress(httpx.TransportError):
                if (await client.get(f"{base}/health")).status_code == 200:
                    break
            await asyncio.sleep(0.02)
    yield base
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def stream_until_cut(
    client: httpx.AsyncClient, body: dict[str, Any], headers: dict[str, str]
) -> tuple[bytes, httpx.RemoteProtocolError | None]:
    """Everything received on a stream, and the protocol error that ended it (if any)."""
    received = b""
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as r:
            assert r.status_code == 200
            async for part in r.aiter_bytes():
                received += part
    except httpx.RemoteProtocolError as exc:
        return received, exc
    return received, None


async def test_drop_after_chunks_cuts_the_stream(live_sim: str) -> None:
    body = {"model": MODEL, "messages": CHAT, "stream": True}
    async with httpx.AsyncClient(base_url=live_sim, timeout=5) as client:
        received, error = await stream_until_cut(client, body, {"x-sim-drop-after-chunks": "2"})
        assert error is not None  # the connection was reset: not a clean end of stream
        assert received.count(b"data: ") == 2 and b"[DONE]" not in received
        # the queued variant too, and the server keeps serving afterwards
        await client.post("/_sim/faults", json=[{"drop_after_chunks": 1}])
        with pytest.raises(httpx.RemoteProtocolError):
            await client.post("/v1/chat/completions", json=body)
        ok = await client.post("/v1/chat/completions", json=body)
        log = (await client.get("/_sim/requests")).json()
    assert ok.status_code == 200 and ok.text.endswith("data: [DONE]\n\n")
    assert [entry["outcome"] for entry in log[-3:]] == ["dropped", "dropped", "ok"]


async def test_stream_timing_follows_ttft_and_token_delay(live_sim: str) -> None:
    body = {"model": MODEL, "messages": CHAT, "stream": True, "max_tokens": 5}
    headers = {"x-sim-ttft-ms": "150", "x-sim-token-delay-ms": "40"}
    arrivals: list[float] = []
    async with httpx.AsyncClient(base_url=live_sim, timeout=5) as client:
        started = time.monotonic()
        async with client.stream(
            "POST", "/v1/chat/completions", json=body, headers=headers
        ) as response:
            async for line in response.aiter_lines():
                if line.startswith("data: {"):
                    arrivals.append(time.monotonic() - started)
    assert len(arrivals) == 6
    # lower bounds only: the simulator may be late, never early
    assert arrivals[0] >= 0.15
    assert arrivals[-1] - arrivals[1] >= 4 * 0.04 * 0.9


async def test_hang_before_headers_times_the_client_out(live_sim: str) -> None:
    body = {"model": MODEL, "messages": CHAT}
    async with httpx.AsyncClient(base_url=live_sim) as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.post(
                "/v1/chat/completions",
                json=body,
                headers={"x-sim-hang": "before_headers"},
                timeout=0.3,
            )
        assert (await client.post("/v1/chat/completions", json=body)).status_code == 200


async def test_hang_after_headers_sends_200_then_nothing(live_sim: str) -> None:
    body = {"model": MODEL, "messages": CHAT, "stream": True}
    headers = {"x-sim-hang": "after_headers"}
    async with httpx.AsyncClient(base_url=live_sim, timeout=0.3) as client:
        async with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as r:
            assert r.status_code == 200
            with pytest.raises(httpx.ReadTimeout):
                await r.aread()
        assert (await client.get("/health")).status_code == 200


async def test_vllm_auth_failure_is_its_bare_string_body() -> None:
    async with sim_client(style="vllm", api_key="k") as client:
        response = await client.post(
            "/v1/chat/completions", json={"model": MODEL, "messages": CHAT}
        )
        models = await client.get("/v1/models")
    assert response.status_code == models.status_code == 401
    assert response.json() == {"error": "Unauthorized"}


async def test_n_choices_bill_every_answer() -> None:
    body = {"model": MODEL, "messages": CHAT, "n": 3, "max_tokens": 4}
    async with sim_client() as client:
        response = (await client.post("/v1/chat/completions", json=body)).json()
    assert [c["index"] for c in response["choices"]] == [0, 1, 2]
    assert response["usage"]["completion_tokens"] == 12


async def test_usage_faults_negative_and_absurd() -> None:
    body = {"model": MODEL, "messages": CHAT}
    async with sim_client() as client:
        honest = (await client.post("/v1/chat/completions", json=body)).json()["usage"]
        negative = await client.post(
            "/v1/chat/completions", json=body, headers={"x-sim-usage": "negative"}
        )
        await client.post("/_sim/faults", json=[{"usage": "absurd"}])
        absurd = await client.post("/v1/chat/completions", json=body)
    assert negative.json()["usage"]["prompt_tokens"] == -honest["prompt_tokens"] - 1
    assert negative.json()["usage"]["completion_tokens"] < 0
    assert absurd.json()["usage"]["prompt_tokens"] == ABSURD_TOKENS
    assert absurd.json()["usage"]["completion_tokens"] == ABSURD_TOKENS


async def test_endless_stream_never_finishes(live_sim: str) -> None:
    body = {"model": MODEL, "messages": CHAT, "stream": True, "max_tokens": 4}
    headers = {"x-sim-endless": "true", "x-sim-token-delay-ms": "1"}
    frames: list[str] = []
    async with (
        httpx.AsyncClient(base_url=live_sim, timeout=5) as client,
        client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as r,
    ):
        async for line in r.aiter_lines():
            if line.startswith("data: "):
                frames.append(line)
            if len(frames) == 40:  # ten times what max_tokens allows
                break
    chunks = [orjson.loads(frame[6:]) for frame in frames]
    assert all(c["choices"][0]["finish_reason"] is None and "usage" not in c for c in chunks)
    async with httpx.AsyncClient(base_url=live_sim, timeout=5) as client:
        for _ in range(100):  # the simulator notices the client left
            [entry] = [e for e in (await client.get("/_sim/requests")).json() if e["stream"]][-1:]
            if entry["t_end_mono"] is not None:
                break
            await asyncio.sleep(0.02)
    assert entry["outcome"] == "cancelled" and entry["events_sent"] >= 40


async def test_stall_after_chunks_goes_silent_until_the_client_leaves(live_sim: str) -> None:
    body = {"model": MODEL, "messages": CHAT, "stream": True}
    headers = {"x-sim-stall-after-chunks": "3"}
    frames: list[str] = []

    async def read() -> None:
        async with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as r:
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    frames.append(line)

    async with httpx.AsyncClient(base_url=live_sim, timeout=0.5) as client:
        with pytest.raises(httpx.ReadTimeout):
            await read()
    assert len(frames) == 3
    async with httpx.AsyncClient(base_url=live_sim, timeout=5) as client:
        for _ in range(100):
            entry = (await client.get("/_sim/requests")).json()[-1]
            if entry["t_end_mono"] is not None:
                break
            await asyncio.sleep(0.02)
    assert (entry["outcome"], entry["events_sent"]) == ("hang", 3)
