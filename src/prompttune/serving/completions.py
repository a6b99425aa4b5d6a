"""OpenAI-compatible endpoints for generation tasks: existing OpenAI clients work unchanged, with
`model` = the task's name.

    POST /v1/completions        prompt (a string or a list), max_tokens, temperature (0 = greedy),
                                top_p, stop, n = 1; choices with finish_reason, and usage in tokens
    POST /v1/chat/completions   messages rendered by the tokenizer's chat template (special tokens
                                kept) in place of the task's text field; the rest of the template
                                (soft tokens, prefixes) is the task's
    GET  /v1/models             the generation tasks, as OpenAI lists models

A prompt is a text of the task's one text field (or, on a task with several, a JSON object of them),
rendered with the task's template up to `{mask}`, as `prompttune generate` does. A generation
request runs on the model thread in chunks of `engine.GENERATION_CHUNK` prompts (no batching across
requests yet), so prediction micro-batches run between its chunks; it counts toward the server's
in-flight limit like the texts of prediction requests. A client that goes away cancels its
generation within one token; a server that must stop answers it 503. What is not offered (streaming,
logprobs, echo, n or best_of > 1, penalties, tools, token-id prompts) is refused by the request
types (422 naming the field), not ignored; other fields OpenAI clients send (user, ...) are ignored.
"""

# No `from __future__ import annotations`: request models are built from the server's limits in
# `openai_routes`, and FastAPI reads handler annotations as objects.

import asyncio
import threading
import time
import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from ..data import examples_from_texts, has_text
from ..errors import DataError, PromptTuneError
from ..generation import MAX_STOP
from .api import APIError, by_json_type
from .batcher import MicroBatcher, QueueFull
from .engine import Cancelled, Completion, Engine, InputError, Sampling
from .limits import Limits
from .pool import TaskInfo


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionChoice(BaseModel):
    text: str
    index: int
    logprobs: None = None
    finish_reason: Literal["stop", "length"]


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: None = None
    finish_reason: Literal["stop", "length"]


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "prompttune"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


DISCONNECT_POLL_S = 0.25
"""How often a generation request checks whether its client is still there."""


def openai_routes(engine: Engine, batcher: MicroBatcher, limits: Limits, generations: set[threading.Event]) -> APIRouter:
    """The OpenAI-compatible endpoints, with `limits` in their request types. Each running generation's
    cancel event is in `generations` while it runs (the server sets them all when it must stop)."""
    Text = Annotated[str, StringConstraints(min_length=1, max_length=limits.max_text_chars)]
    Stop = by_json_type(str=Text, list=Annotated[list[Text], Field(max_length=MAX_STOP)]) | None
    MaxTokens = Annotated[int, Field(ge=1, le=limits.max_new_tokens)]

    class Settings(BaseModel):
        # Strict: "max_tokens": "4" is refused as OpenAI refuses it. Fields OpenAI clients send that
        # change nothing here (user, metadata, ...) are ignored; those that would change the text are
        # either done (seed) or refused below.
        model_config = ConfigDict(extra="ignore", strict=True)
        model: str = Field(description="the name of a generation task (GET /v1/models)")
        temperature: float = Field(1.0, ge=0, le=2, description="0 = greedy decoding; above 0, sampling")
        top_p: float = Field(1.0, gt=0, le=1)
        n: Literal[1] = Field(1, description="one choice per prompt")
        stop: Stop = Field(None, description=f"up to {MAX_STOP} strings that end the text (not included in it)")
        stream: Literal[False] = Field(False, description="streaming is not offered")
        presence_penalty: float = Field(0, ge=0, le=0, description="penalties are not offered")
        frequency_penalty: float = Field(0, ge=0, le=0, description="penalties are not offered")
        seed: int | None = Field(None, description="the same seed and request sample the same text")
        logit_bias: None = Field(None, description="not offered")

    class CompletionRequest(Settings):
        prompt: by_json_type(str=Text, list=Annotated[list[Text], Field(min_length=1, max_length=limits.max_texts)])
        max_tokens: MaxTokens = 16
        logprobs: None = Field(None, description="not offered")
        echo: Literal[False] = Field(False, description="the prompt is not repeated in the text")
        best_of: Literal[1] = 1
        suffix: None = Field(None, description="not offered")

    class ChatMessage(BaseModel):
        role: Literal["system", "developer", "user", "assistant"]
        content: Text

    class ChatRequest(Settings):
        messages: list[ChatMessage] = Field(min_length=1, max_length=limits.max_texts)
        max_tokens: MaxTokens | None = None
        max_completion_tokens: MaxTokens | None = Field(None, description="the newer name of max_tokens")
        logprobs: Literal[False] = Field(False, description="not offered")
        tools: None = Field(None, description="tool calls are not offered")
        response_format: None = Field(None, description="structured output is not offered")

    def sampling(body: Settings, tokens: int) -> Sampling:
        stops = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
        return Sampling(max_tokens=tokens, temperature=body.temperature, top_p=body.top_p, stop=stops, seed=body.seed)

    async def run(request: Request, n: int, fn, *args) -> list[Completion] | Completion:
        """`await fn(*args, cancel)` (an engine generation), counted as `n` texts in flight; errors as
        OpenAI error responses. A client that goes away cancels its generation (within a token)."""
        cancel = threading.Event()
        try:
            with batcher.admit(n):
                generations.add(cancel)
                watch = asyncio.ensure_future(cancel_on_disconnect(request, cancel))
                try:
                    return await fn(*args, cancel)
                finally:
                    generations.discard(cancel)
                    watch.cancel()
        except QueueFull as e:
            raise APIError(503, f"the server is busy: {e}; retry later", headers={"Retry-After": "1"}) from None
        except Cancelled:  # the server is stopping (a client that went away reads no answer)
            raise APIError(503, "the server is stopping; retry later", headers={"Retry-After": "1"}) from None
        except InputError as e:
            raise APIError(400, str(e), loc=("body", e.field)) from None
        except KeyError as e:  # unloaded meanwhile
            raise APIError(404, e.args[0], loc=("body", "model")) from None
        except PromptTuneError as e:
            raise APIError(400, str(e)) from None

    router = APIRouter(tags=["openai"])

    @router.get("/v1/models", response_model=ModelList)
    async def models() -> ModelList:
        """The loaded generation tasks: what can be `model` in the endpoints below (classification tasks
        answer on POST /v1/tasks/{task}/predict and are listed by GET /v1/tasks)."""
        now = int(time.time())
        return ModelList(data=[ModelCard(id=info.name, created=now) for info in engine.tasks() if info.generation])

    @router.post("/v1/completions", response_model=CompletionResponse)
    async def completions(body: CompletionRequest, request: Request) -> CompletionResponse:
        """Continue each prompt with a generation task (OpenAI's legacy completions API)."""
        info = generation_task(engine, body.model)
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        examples = [prompt_example(p, info, None if isinstance(body.prompt, str) else i) for i, p in enumerate(prompts)]
        done = await run(request, len(examples), engine.complete, body.model, examples, sampling(body, body.max_tokens))
        return CompletionResponse(id=f"cmpl-{uuid.uuid4().hex}", created=int(time.time()), model=body.model,
                                  choices=[CompletionChoice(text=c.text, index=i, finish_reason=c.finish_reason)
                                           for i, c in enumerate(done)], usage=usage(done))

    @router.post("/v1/chat/completions", response_model=ChatCompletionResponse)
    async def chat_completions(body: ChatRequest, request: Request) -> ChatCompletionResponse:
        """Answer a conversation with a generation task whose tokenizer has a chat template."""
        generation_task(engine, body.model)
        messages = [m.model_dump() for m in body.messages]
        for i, m in enumerate(messages):  # as a blank prompt is refused (`prompt_example`)
            if not has_text(m["content"]):
                raise APIError(422, f"messages[{i}].content {m['content']!r} has no text (empty, or only whitespace or "
                                    "invisible characters)", loc=("body", "messages", i, "content"))
        tokens = body.max_completion_tokens or body.max_tokens or 16
        done = await run(request, 1, engine.chat, body.model, messages, sampling(body, tokens))
        return ChatCompletionResponse(id=f"chatcmpl-{uuid.uuid4().hex}", created=int(time.time()), model=body.model,
                                      choices=[ChatChoice(index=0, message=AssistantMessage(content=done.text),
                                                          finish_reason=done.finish_reason)], usage=usage([done]))

    return router


async def cancel_on_disconnect(request: Request, cancel: threading.Event) -> None:
    """Set `cancel` once the client of `request` has gone away (checked every `DISCONNECT_POLL_S`)."""
    while not cancel.is_set():
        if await request.is_disconnected():
            cancel.set()
            return
        await asyncio.sleep(DISCONNECT_POLL_S)


def generation_task(engine: Engine, name: str) -> TaskInfo:
    """The loaded generation task `name`; 404 if there is none, 400 if it classifies."""
    try:
        info = engine.task(name)
    except KeyError as e:
        raise APIError(404, f"the model {name!r} does not exist: {e.args[0]}", loc=("body", "model")) from None
    if not info.generation:
        raise APIError(400, f"task {name!r} classifies text: use POST /v1/tasks/{name}/predict", loc=("body", "model"))
    return info


def prompt_example(prompt: str, info: TaskInfo, index: int | None) -> dict:
    """A prompt as an example of the task (`data.examples_from_texts`' rules); 422 naming it if it does not fit."""
    where = "prompt" if index is None else f"prompt[{index}]"
    try:
        return examples_from_texts([prompt], info.text_fields, name=where)[0]
    except DataError as e:
        raise APIError(422, str(e), loc=("body", "prompt") if index is None else ("body", "prompt", index)) from None


def usage(done: list[Completion]) -> Usage:
    prompt, completion = sum(c.prompt_tokens for c in done), sum(c.completion_tokens for c in done)
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)
