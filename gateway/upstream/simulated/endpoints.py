"""SIMULATOR endpoints: chat, FIM, text completions and embeddings, with honest token counts.

Prompt tokens come from the same `TokenCounter` the gateway uses; the answer comes from
`answers.py`, its shape from `wire.py`, and its pacing and faults from `delivery.py`.
Each handler takes (parsed body, fault, request-log entry) once `app.py` has done the rest.
"""

from __future__ import annotations

from typing import Any

from starlette.exceptions import HTTPException
from starlette.responses import Response

from gateway.upstream.simulated.answers import (
    embedding_vector,
    encoded_vector,
    prompt_seed,
    sample_answer,
    tool_call,
    tool_call_tokens,
)
from gateway.upstream.simulated.delivery import Delivery
from gateway.upstream.simulated.errors import SimError
from gateway.upstream.simulated.faults import Fault
from gateway.upstream.simulated.options import SimulatorOptions
from gateway.upstream.simulated.validation import (
    MISTRAL_CHAT_FIELDS,
    MISTRAL_EMBEDDING_FIELDS,
    MISTRAL_FIM_FIELDS,
    chat_inputs,
    embedding_inputs,
    fim_inputs,
    max_tokens,
    reject_extra_fields,
    requested_model,
)
from gateway.upstream.simulated.wire import Completion, embeddings_body
from gateway.upstream.tokenizer import ModelTokenizer, TokenCounter

_MAX_CHOICES = 8


class Endpoints:
    """The POST endpoints of one simulator."""

    def __init__(self, options: SimulatorOptions, delivery: Delivery) -> None:
        self.options = options
        self.style = options.style
        self.delivery = delivery

    def _plain(
        self, tokenizer: ModelTokenizer, body: dict[str, Any], prompt_tokens: int, seed: str
    ) -> Completion:
        """A plain-text answer (FIM and text completions: no `n`, no JSON mode)."""
        limit = max_tokens(self.style, body)
        answer = sample_answer(tokenizer, self.options.output_tokens, limit, seed, json_mode=False)
        return Completion(prompt_tokens, *answer)

    async def chat(self, body: dict[str, Any], fault: Fault, entry: dict[str, Any]) -> Response:
        """POST /v1/chat/completions."""
        if self.style == "mistral":
            reject_extra_fields(body, MISTRAL_CHAT_FIELDS)
        model = requested_model(self.options, body)
        messages, tools, tool_choice = chat_inputs(self.style, body)
        tokenizer = TokenCounter.for_model(model)
        prompt_tokens = tokenizer.count_chat(messages, tools).tokens
        seed = prompt_seed(self.options.seed, model, messages, tools)
        if tools and (tool_choice in ("any", "required") or isinstance(tool_choice, dict)):
            call = tool_call(tools, tool_choice, seed)
            tokens = tool_call_tokens(tokenizer, call)
            completion = Completion(prompt_tokens, [], tokens, "tool_calls", [call])
        else:
            completion = self._chat_text(tokenizer, body, prompt_tokens, seed)
        return await self.delivery.answer(body, fault, entry, model, completion, "chat")

    def _chat_text(
        self, tokenizer: ModelTokenizer, body: dict[str, Any], prompt_tokens: int, seed: str
    ) -> Completion:
        """A text answer (JSON when `response_format` asks), `n` of them without streaming."""
        response_format = body.get("response_format") or {}
        json_mode = isinstance(response_format, dict) and response_format.get("type") in (
            "json_object",
            "json_schema",
        )
        wanted, limit = self.options.output_tokens, max_tokens(self.style, body)
        pieces, tokens, finish = sample_answer(tokenizer, wanted, limit, seed, json_mode=json_mode)
        completion = Completion(prompt_tokens, pieces, tokens, finish)
        # `n` answers without streaming only, capped so a request cannot stall the simulator.
        n = body.get("n")
        copies = min(n, _MAX_CHOICES) if isinstance(n, int) and not body.get("stream") else 1
        for index in range(1, copies):
            more, more_tokens, _ = sample_answer(
                tokenizer, wanted, limit, f"{seed}#{index}", json_mode=json_mode
            )
            completion.extra_choices.append(("".join(more), more_tokens))
        return completion

    async def fim(self, body: dict[str, Any], fault: Fault, entry: dict[str, Any]) -> Response:
        """POST /v1/fim/completions (Mistral only; vLLM has no FIM route)."""
        if self.style != "mistral":
            raise HTTPException(404)
        reject_extra_fields(body, MISTRAL_FIM_FIELDS)
        model = requested_model(self.options, body)
        prompt, suffix = fim_inputs(body)
        tokenizer = TokenCounter.for_model(model)
        prompt_tokens = tokenizer.count_fim(prompt, suffix).tokens
        seed = prompt_seed(self.options.seed, model, prompt, suffix)
        completion = self._plain(tokenizer, body, prompt_tokens, seed)
        return await self.delivery.answer(body, fault, entry, model, completion, "chat")

    async def completions(
        self, body: dict[str, Any], fault: Fault, entry: dict[str, Any]
    ) -> Response:
        """POST /v1/completions (vllm/openai styles): prompt text or token ids."""
        if self.style == "mistral":
            raise HTTPException(404)
        model = requested_model(self.options, body)
        if body.get("suffix") and self.style == "vllm":
            raise SimError(
                400,
                "suffix is only supported for models with FIM completion rendering",
                param="suffix",
            )
        tokenizer = TokenCounter.for_model(model)
        prompt = body.get("prompt")
        prompt_tokens = _prompt_tokens(tokenizer, prompt)
        seed = prompt_seed(self.options.seed, model, prompt)
        completion = self._plain(tokenizer, body, prompt_tokens, seed)
        return await self.delivery.answer(body, fault, entry, model, completion, "text")

    async def embeddings(
        self, body: dict[str, Any], fault: Fault, entry: dict[str, Any]
    ) -> Response:
        """POST /v1/embeddings: deterministic unit vectors, float or base64."""
        if self.style == "mistral":
            reject_extra_fields(body, MISTRAL_EMBEDDING_FIELDS)
        model = requested_model(self.options, body)
        texts, dim, encoding = embedding_inputs(self.options, body)
        prompt_tokens = TokenCounter.for_model(model).count_texts(texts).tokens
        vectors = [
            encoded_vector(embedding_vector(text, dim, self.options.seed), encoding)
            for text in texts
        ]
        out = embeddings_body(self.style, model, vectors, prompt_tokens, fault)
        await self.delivery.wait_for_whole(fault, 1)
        return self.delivery.json(out, fault, entry)


def _prompt_tokens(tokenizer: ModelTokenizer, prompt: Any) -> int:
    """A text-completion prompt's tokens; text is encoded with BOS, as vLLM does."""
    if isinstance(prompt, str):
        return tokenizer.count_text(prompt).tokens + 1
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, str) for p in prompt):
            return sum(tokenizer.count_text(p).tokens + 1 for p in prompt)
        if all(isinstance(p, int) for p in prompt):
            return len(prompt)
        if all(isinstance(p, list) for p in prompt):
            return sum(len(p) for p in prompt)
    raise SimError(
        400, "prompt must be a string, a list of strings or a list of token ids", param="prompt"
    )
