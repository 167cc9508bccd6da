"""The official `mistralai` SDK (3.x), unchanged, against the running gateway."""

from __future__ import annotations

from mistralai.client import Mistral

from tests.e2e.stack import Stack

MESSAGES = [{"role": "user", "content": "Tell me about cost proxies."}]


def mistral(gw: Stack) -> Mistral:
    return Mistral(api_key=gw.key, server_url=gw.base_url)


def test_chat_complete(gw: Stack) -> None:
    with mistral(gw) as client:
        response = client.chat.complete(
            model="mistral-small-latest", messages=MESSAGES, max_tokens=8
        )
    assert response.choices[0].message.content
    assert response.usage.completion_tokens == 8


def test_chat_stream(gw: Stack) -> None:
    with mistral(gw) as client:
        events = list(client.chat.stream(model="mistral-small-latest", messages=MESSAGES))
    assert events[-1].data.usage is not None
    text = "".join(e.data.choices[0].delta.content or "" for e in events if e.data.choices)
    assert text


def test_fim(gw: Stack) -> None:
    with mistral(gw) as client:
        response = client.fim.complete(
            model="codestral-latest", prompt="def add(a, b):\n    ", suffix="\n\nprint(add(1, 2))"
        )
    assert response.choices[0].message.content
    sent = gw.sim_requests("sim-plateforme")[-1]
    assert sent["path"].endswith("/fim/completions")
    assert sent["body"]["suffix"] == "\n\nprint(add(1, 2))"


def test_embeddings(gw: Stack) -> None:
    with mistral(gw) as client:
        response = client.embeddings.create(model="mistral-embed", inputs=["one", "two"])
    assert len(response.data) == 2 and response.data[0].embedding


def test_models(gw: Stack) -> None:
    with mistral(gw) as client:
        models = client.models.list()
    ids = {card.id for card in models.data}
    assert "codestral-latest" in ids
    assert all(card.type == "base" for card in models.data)
