"""The model side of the server: the task pool, driven from one model thread.

Every call that touches the model (a micro-batch of predictions, a generation, loading or
unloading a task) runs on one thread, in the order it was asked for, so the event loop never
waits on a forward pass and no two calls bind their prompts on the shared backbone at once.
The router (`batcher.py`) decides what runs together; this side only runs it.

    >>> engine = Engine(TaskPool(device="cpu"))
    >>> engine.add("runs/sst2", "sst2")
    >>> await engine.run(engine.predict, [("sst2", {"sentence": "a gripping film"})])
    [Prediction(label='1', probabilities={'0': 0.08, '1': 0.92})]

The event loop never calls the pool (whose lock is held for a whole forward pass): it reads the
engine's own list of tasks, which only the model thread replaces, after each add or remove.

What it adds to `TaskPool`: per-item failures (a batch that fails is run again item by item, so a
task removed while its texts waited fails only its own requests), token-level generation with usage
counts, stop strings, seeds and chat prompts, run in chunks that prediction batches can come between
and cancelled within a token (`generate`) (`TaskPool.generate_ids`, `generation.chat_prompt_ids`), and
an unreadable artifact reported as an `ArtifactError`.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from ..chat import ChatFormat
from ..data import HISTORY, conversation
from ..errors import ArtifactError, DataError, PromptTuneError
from ..generation import chat_prompt_ids, check_generates, cut_at_stop, first_overflow, prompt_ids
from ..templates import literal_ids
from .pool import Prediction, TaskInfo, TaskPool


GENERATION_CHUNK = 8
"""Prompts per model-thread call of a generation request (`generation.generate_ids`' batch size)."""


class Cancelled(PromptTuneError):
    """A generation request given up before its text was done: its client went away, or the server is stopping."""


class InputError(PromptTuneError):
    """A request the task cannot run, naming the request's field (`field`)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Sampling:
    """How to continue a prompt: greedy when `temperature` is 0, else sampled (with `top_p`)."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    """Strings that end the text; the first one found and what follows it are cut off."""
    seed: int | None = None
    """Seeds torch's generator before each chunk of prompts: the same request samples the same text."""

    def generate_kwargs(self) -> dict:
        """The keyword arguments of `generation.generate_ids` this sampling sets."""
        kwargs: dict = {"max_new_tokens": self.max_tokens, "stop": self.stop}
        if self.temperature > 0:
            kwargs.update(do_sample=True, temperature=self.temperature, top_p=self.top_p)
        return kwargs


@dataclass(frozen=True)
class Completion:
    """One prompt's generated text and what it cost, in tokens."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    """"stop" (the model ended the text, or a stop string did) or "length" (`max_tokens` reached)."""


class Engine:
    """A `TaskPool` behind one model thread (see the module docstring)."""

    def __init__(self, pool: TaskPool):
        self.pool = pool
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prompttune-model")
        self._tasks: dict[str, TaskInfo] = {info.name: info for info in pool.tasks()}
        """The loaded tasks, read without a lock: replaced whole (never changed in place) after an add or remove."""

    async def run(self, fn, /, *args, **kwargs):
        """`fn(*args, **kwargs)` on the model thread, awaited without blocking the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self._thread, functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        """Wait for the model thread's queued calls, then end it."""
        self._thread.shutdown(wait=True)

    # --- tasks ----------------------------------------------------------------------------

    def add(self, path: str | Path, name: str | None = None) -> TaskInfo:
        """Load the task artifact at `path` (see `TaskPool.add`). Raises `ArtifactError` for a
        directory that is not a readable task artifact, `ModelError` for one made on another
        backbone, `ConfigError` for a name already taken; the loaded tasks are untouched then."""
        try:
            info = self.pool.add(path, name)
        except OSError as e:
            raise ArtifactError(f"cannot read the task artifact {str(path)!r}: {e.strerror or e}") from None
        self._tasks = {**self._tasks, info.name: info}
        return info

    def remove(self, name: str) -> None:
        """Unload task `name`; raises `KeyError` naming the loaded tasks if there is none."""
        self.pool.remove(name)
        self._tasks = {n: info for n, info in self._tasks.items() if n != name}

    def tasks(self) -> list[TaskInfo]:
        return list(self._tasks.values())

    def task(self, name: str) -> TaskInfo:
        """The loaded task `name`; raises `KeyError` naming the loaded tasks if there is none."""
        tasks = self._tasks
        if name not in tasks:
            raise KeyError(f"no task named {name!r}; loaded: {sorted(tasks)}")
        return tasks[name]

    @property
    def model_name(self) -> str | None:
        return self.pool.backbone.name if self.pool.backbone is not None else None

    # --- running --------------------------------------------------------------------------

    def predict(self, items: list[tuple[str, dict]]) -> list[Prediction | Exception]:
        """Predictions for (task, example) pairs of any tasks, in order, in one pool call; if that
        fails, each item alone, so an item that fails (its task was removed) fails by itself."""
        try:
            return list(self.pool.predict_mixed(items))
        except Exception as e:
            if len(items) == 1:
                return [e]
        return [self._predict_one(item) for item in items]

    def _predict_one(self, item: tuple[str, dict]) -> Prediction | Exception:
        try:
            return self.pool.predict_mixed([item])[0]
        except Exception as e:
            return e

    async def complete(self, name: str, examples: list[dict], sampling: Sampling,
                       cancel: threading.Event | None = None) -> list[Completion]:
        """Continue each example's prompt (the task's template up to `{mask}`). See `generate`."""
        prompts = await self.run(self._completion_prompts, name, examples, sampling)
        return await self.generate(name, prompts, sampling, cancel)

    async def chat(self, name: str, messages: list[dict], sampling: Sampling,
                   cancel: threading.Event | None = None) -> Completion:
        """Answer a conversation: rendered by the tokenizer's chat template (with the assistant's turn
        opened), it takes the place of the task's one text field in its template. See `generate`."""
        prompt = await self.run(self._chat_prompt, name, messages, sampling)
        return (await self.generate(name, [prompt], sampling, cancel))[0]

    async def generate(self, name: str, prompts: list[list[int]], sampling: Sampling,
                       cancel: threading.Event | None = None) -> list[Completion]:
        """Continue `prompts` (token ids) with task `name`, `GENERATION_CHUNK` prompts per model-thread
        call, so the micro-batches of prediction requests that arrive meanwhile run between the chunks
        instead of after the whole request. Setting `cancel` (the client went away, the server is
        stopping) ends the request within one generated token: raises `Cancelled`. Raises `KeyError` if
        the task is unloaded meanwhile."""
        out: list[Completion] = []
        for start in range(0, len(prompts), GENERATION_CHUNK):
            if cancel is not None and cancel.is_set():
                raise Cancelled("the request was cancelled before its text was done")
            out += await self.run(self._generate_chunk, name, prompts[start : start + GENERATION_CHUNK], sampling, cancel)
        if cancel is not None and cancel.is_set():
            raise Cancelled("the request was cancelled before its text was done")
        return out

    def _completion_prompts(self, name: str, examples: list[dict], sampling: Sampling) -> list[list[int]]:
        task = self._generator(name)
        prompts = [prompt_ids(task, ex) for ex in examples]
        self._check_room(task, prompts, sampling, field="prompt")
        return prompts

    def _chat_prompt(self, name: str, messages: list[dict], sampling: Sampling) -> list[int]:
        info, task = self.task(name), self._generator(name)
        chat = task.chat if task.chat is not None else ChatFormat.of(task.tokenizer)
        if chat is None:
            raise InputError("model", f"task {name!r}: its tokenizer has no chat template; use /v1/completions")
        if len(info.text_fields) != 1:
            raise InputError("model", f"task {name!r} reads {len(info.text_fields)} text fields {info.text_fields}; "
                                      "a chat takes the place of one")
        field = info.text_fields[0]
        try:
            history, user, reply = conversation(messages, "messages")
            if reply is not None:  # a reply to continue is not offered; answering the user instead would drop it
                raise InputError("messages", f"task {name!r}: the conversation ends with an assistant message; end it "
                                             "with the user message to answer")
            if task.chat is not None:  # trained on chats: the last user turn fills the task's template, as in training
                prompt = prompt_ids(task, {field: user, HISTORY: history})
            else:  # the rendered chat takes the place of the task's text field
                prompt = chat_prompt_ids(task, field, chat.prompt_ids(history, literal_ids(task.tokenizer, user)))
        except DataError as e:  # the template's own checks (jinja2 raise_exception: roles out of order, ...)
            raise InputError("messages", f"task {name!r}: {e}") from None
        self._check_room(task, [prompt], sampling, field="messages")
        return prompt

    def _generator(self, name: str):
        info = self.task(name)
        if not info.generation:
            raise InputError("model", f"task {name!r} classifies text: use POST /v1/tasks/{name}/predict")
        check_generates(info.classifier)
        return info.classifier

    @staticmethod
    def _check_room(task, prompts: list[list[int]], sampling: Sampling, *, field: str) -> None:
        over = first_overflow(task, prompts, sampling.max_tokens)
        if over is not None:
            i, room = over
            where = field if len(prompts) == 1 else f"{field}[{i}]"
            raise InputError(where, f"{where} is {len(prompts[i])} tokens and max_tokens is {sampling.max_tokens}: "
                                    f"together more than the {room} positions the model has for this task; shorten the "
                                    "prompt or lower max_tokens")

    def _generate_chunk(self, name: str, prompts: list[list[int]], sampling: Sampling,
                        cancel: threading.Event | None) -> list[Completion]:
        if cancel is not None and cancel.is_set():  # given up while it waited for the model thread
            return []
        task = self._generator(name)
        kwargs = sampling.generate_kwargs()
        if cancel is not None:
            kwargs["stopping_criteria"] = StoppingCriteriaList([WhenSet(cancel)])
        if sampling.seed is not None:  # the model thread is the only user of torch's generator
            torch.manual_seed(sampling.seed)
        new = self.pool.generate_ids(name, prompts, **kwargs)
        out = []
        for ids, generated in zip(prompts, new):
            text, stopped = cut_at_stop(task.tokenizer.decode(generated, skip_special_tokens=True), sampling.stop)
            ended = stopped or len(generated) < sampling.max_tokens
            out.append(Completion(text, len(ids), len(generated), "stop" if ended else "length"))
        return out


class WhenSet(StoppingCriteria):
    """Stop every row of a generation once `event` is set (checked after each new token)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)
