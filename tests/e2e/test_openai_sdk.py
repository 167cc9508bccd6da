"""The official `openai` SDK, unchanged, against the running gateway (sync and async)."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from tests.e2e.stack import Stack

CHAT = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Say something about gateways."},
]


def client(gw: Stack, **kwargs: object) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.base_url}/v1", api_key=gw.key, **kwargs)


def direct(gw: Stack, upstream: str, path: str, body: dict) -> dict:
    """Ask the simulated upstream itself, bypassing the gateway."""
    with gw.sim(upstream) as sim:
        response = sim.post(f"/v1{path}", json=body)
        response.raise_for_status()
        return response.json()


def test_chat_returns_exactly_what_the_upstream_returned(gw: Stack) -> None:
    completion = client(gw).chat.completions.create(
        model="mistral-small-latest", messages=CHAT, max_tokens=12
    )
    upstream = direct(
        gw,
        "sim-plateforme",
        "/chat/completions",
        {"model": "mistral-small-latest", "messages": CHAT, "max_tokens": 12},
    )
    got = completion.model_dump(exclude_unset=True)
    assert got["choices"] == upstream["choices"]
    assert got["usage"] == upstream["usage"]
    assert got["model"] == upstream["model"]


def test_raw_response_carries_gateway_headers(gw: Stack) -> None:
    raw = client(gw).chat.completions.with_raw_response.create(
        model="mistral-small-latest", messages=CHAT
    )
    assert len(raw.headers["x-request-id"]) == 32
    assert raw.headers["x-gateway-deployment"] == "sim-plateforme"
    assert raw.headers["x-gateway-region"] == "eu-west"


def test_stream_yields_same_text_and_usage_in_last_chunk(gw: Stack) -> None:
    openai_client = client(gw)
    whole = openai_client.chat.completions.create(model="mistral-small-latest", messages=CHAT)
    chunks = list(
        openai_client.chat.completions.create(
            model="mistral-small-latest", messages=CHAT, stream=True
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == whole.usage.total_tokens


async def test_async_client_stream_and_not(gw: Stack) -> None:
    async with openai.AsyncOpenAI(base_url=f"{gw.base_url}/v1", api_key=gw.key) as aclient:
        whole = await aclient.chat.completions.create(model="open-small", messages=CHAT)
        stream = await aclient.chat.completions.create(
            model="open-small", messages=CHAT, stream=True
        )
        chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    # vLLM only reports streamed usage when asked; the gateway asks for its own accounting and
    # hides that extra chunk from a client that did not ask.
    assert all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks)
    sent = gw.sim_requests("sim-vllm")[-1]["body"]
    assert sent["stream_options"] == {"include_usage": True}


def test_vllm_stream_with_include_usage_keeps_the_usage_chunk(gw: Stack) -> None:
    chunks = list(
        client(gw).chat.completions.create(
            model="open-small",
            messages=CHAT,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_openai_only_fields_are_translated_for_la_plateforme(gw: Stack) -> None:
    completion = client(gw).chat.completions.create(
        model="mistral-small-latest",
        messages=[{"role": "user", "content": "hi", "name": "alice"}],
        seed=7,
        max_completion_tokens=5,
        user="u-123",
        stream=False,
    )
    assert completion.choices[0].message.content
    sent = gw.sim_requests("sim-plateforme")[-1]["body"]
    assert sent["random_seed"] == 7
    assert sent["max_tokens"] == 5
    assert "seed" not in sent and "user" not in sent and "max_completion_tokens" not in sent
    assert "name" not in sent["messages"][0]


def test_tool_calls_pass_through_intact(gw: Stack) -> None:
    tools = [
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
    completion = client(gw).chat.completions.create(
        model="mistral-small-latest",
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=tools,
        tool_choice="required",
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls[0].function.name == "get_weather"
    assert gw.sim_requests("sim-plateforme")[-1]["body"]["tools"] == tools
    # the tool result goes back through the gateway too
    call = choice.message.tool_calls[0]
    follow_up = client(gw).chat.completions.create(
        model="open-small",
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
        ],
        tools=tools,
    )
    assert follow_up.choices[0].message.content
    assert gw.sim_requests("sim-vllm")[-1]["body"]["messages"][2]["tool_call_id"] == call.id


def test_embeddings_match_the_upstream(gw: Stack) -> None:
    result = client(gw).embeddings.create(model="mistral-embed", input=["alpha", "beta"])
    upstream = direct(
        gw, "sim-plateforme", "/embeddings", {"model": "mistral-embed", "input": ["alpha", "beta"]}
    )
    for got, want in zip(result.data, upstream["data"], strict=True):
        assert got.embedding == pytest.approx(want["embedding"], rel=1e-6)
    assert result.usage.prompt_tokens == upstream["usage"]["prompt_tokens"]


def test_models_lists_what_the_tenant_may_use(gw: Stack) -> None:
    ids = {m.id for m in client(gw).models.list()}
    # an `eu` tenant: the us-only deployment's model is not offered
    assert ids == {
        "mistral-small-latest",
        "codestral-latest",
        "mistral-embed",
        "open-small",
        "open-embed",
    }
    assert client(gw).models.retrieve("open-small").id == "open-small"


def test_stream_reaches_the_client_chunk_by_chunk(gw: Stack) -> None:
    gw.program_faults("sim-plateforme", [{"token_delay_ms": 150}])
    started = time.monotonic()
    arrivals = []
    stream = client(gw).chat.completions.create(
        model="mistral-small-latest", messages=CHAT, max_tokens=12, stream=True
    )
    for _chunk in stream:
        arrivals.append(time.monotonic() - started)
    # 12 tokens 150 ms apart: the first chunk must arrive long before the stream ends
    assert len(arrivals) >= 12
    assert arrivals[-1] - arrivals[0] > 1.2
    assert arrivals[0] < arrivals[-1] - 1.0


def test_upstream_error_keeps_status_in_openai_shape(gw: Stack) -> None:
    gw.program_faults("sim-plateforme", [{"status": 503}])
    with pytest.raises(openai.InternalServerError) as caught:
        client(gw, max_retries=0).chat.completions.create(
            model="mistral-small-latest", messages=CHAT
        )
    assert caught.value.status_code == 503
    assert isinstance(caught.value.body, dict) and isinstance(caught.value.body["message"], str)


def test_upstream_rate_limit_passes_retry_after(gw: Stack) -> None:
    gw.program_faults("sim-plateforme", [{"status": 429, "retry_after": "2"}])
    response = httpx.post(
        f"{gw.base_url}/v1/chat/completions",
        headers={"authorization": f"Bearer {gw.key}"},
        json={"model": "mistral-small-latest", "messages": CHAT},
    )
    assert response.status_code == 429
    assert response.headers["retry-after"] == "2"
    assert response.json()["error"]["type"] == "rate_limit_error"
