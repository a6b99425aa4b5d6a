"""`prompttune serve`: many tasks on one loaded model over HTTP (FastAPI + uvicorn).

    POST   /v1/tasks/{task}/predict   {"texts": [...]} → a label and per-label probabilities per text
    GET    /v1/tasks                  the loaded tasks: method, template, labels, sizes
    POST   /v1/tasks                  {"path": ..., "name": ...}: load a task (only from --allow-dir)
    DELETE /v1/tasks/{task}           unload it
    POST   /v1/completions            OpenAI-compatible, for generation tasks (completions.py)
    POST   /v1/chat/completions       the same for chats, where the tokenizer has a chat template
    GET    /v1/models                 the tasks, as OpenAI lists models
    GET    /health, GET /metrics (Prometheus), GET /docs (OpenAPI)

Requests go to the router (`batcher.py`: a bounded queue, micro-batches of texts from any tasks),
which hands batches to the model side (`engine.py`: the task pool on one model thread). Request
and response bodies are pydantic models, so validation and the OpenAPI schema come from the types;
the limits (`limits.Limits`) are part of those types.

Security: binds to 127.0.0.1 unless told otherwise; loads tasks at run time only from the
directories given with --allow-dir (symlinks resolved first); artifacts are safetensors and JSON,
never unpickled. SIGTERM stops accepting connections and lets in-flight requests finish (up to
`GRACEFUL_SHUTDOWN_S`).
"""

# No `from __future__ import annotations`: request models are built from the limits inside
# `build_app`, and FastAPI reads handler annotations as objects, not as names in this module.

import asyncio
import json
import logging
import re
import socket
import sys
import threading
from collections.abc import Sequence
from contextlib import asynccontextmanager, closing
from pathlib import Path
from typing import Annotated

import uvicorn
from fastapi import FastAPI
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from starlette.exceptions import HTTPException

from ..artifacts import dtype_note
from ..chat import has_chat_template
from ..devices import DTYPES, dtype_name
from ..data import examples_from_texts
from ..errors import ConfigError, DataError, PromptTuneError
from .api import (APIError, BodyLimit, CountRequests, api_error_handler, by_json_type, http_error_handler,
                  validation_error_handler)
from .batcher import MicroBatcher, QueueClosed, QueueFull
from .completions import openai_routes
from .engine import Engine
from .limits import Limits
from .metrics import ServerMetrics
from .pool import TASK_NAME, TASK_NAME_RULE, TaskInfo, TaskPool

GRACEFUL_SHUTDOWN_S = 30
"""How long SIGTERM waits for in-flight requests before cancelling them."""
DRAIN_MARGIN_S = 5
"""What a stopping server has not started `GRACEFUL_SHUTDOWN_S - DRAIN_MARGIN_S` after SIGTERM (texts
still queued, generations still running) is answered 503 with Retry-After, so no request is cut off
without an answer."""
RETRY_AFTER_S = 1

log = logging.getLogger("uvicorn.error")  # uvicorn's server log: these lines show as its own do (--log-level)


# --- bodies ---------------------------------------------------------------------------------


class LabelProbabilities(BaseModel):
    label: str = Field(description="the most probable label")
    probabilities: dict[str, float] = Field(description="every label's probability; they sum to 1")


class PredictResponse(BaseModel):
    task: str
    predictions: list[LabelProbabilities] = Field(description="one per text, in order")


class TaskOut(BaseModel):
    name: str
    path: str = Field(description="the artifact's directory, symlinks resolved")
    method: str | list[str]
    template: str | None = Field(description="None for a task read by a linear head")
    labels: list[str]
    text_fields: list[str] = Field(description="what each text fills: one field reads a text as it is, "
                                               "several need an object with them")
    generation: bool = Field(description="a text task: use /v1/completions with model = its name")
    chat: bool = Field(description="a generation task whose tokenizer has a chat template: /v1/chat/completions works")
    stored_numbers: int = Field(description="numbers the artifact stores beside the shared model")
    bytes: int = Field(description="size of the artifact's weights file")
    own_model_bytes: int = Field(description="memory of the model copy this task needs because it changes the "
                                             "backbone's own weights; 0 = it shares the loaded model")
    added_bytes: int = Field(description="memory the task adds beside the shared model (its stored numbers, an "
                                         "in-context task's demonstration keys/values); 0 with a model copy of its own")
    trained_dtype: str = Field(description="the dtype of the model's weights the task was trained in; it runs in the "
                                           "server's (GET /health: dtype)")


class TasksOut(BaseModel):
    model: str | None = Field(description="the backbone every task runs on")
    tasks: list[TaskOut]


class LoadTask(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field(min_length=1, description="a task artifact directory inside one of the server's --allow-dir directories")
    name: Annotated[str, StringConstraints(pattern=TASK_NAME)] | None = Field(
        None, description="the task's name (default: the directory's name)")


class Removed(BaseModel):
    removed: str


class Health(BaseModel):
    status: str
    model: str | None
    device: str
    dtype: str
    quantization: str
    """none, nf4, fp4 or int8: how the frozen base's Linear weights are stored."""
    tasks: int


def predict_request(limits: Limits) -> type[BaseModel]:
    """The body of `POST /v1/tasks/{task}/predict`, with the server's limits in its types."""
    Text = Annotated[str, StringConstraints(min_length=1, max_length=limits.max_text_chars)]

    class PredictRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        texts: list[by_json_type(str=Text, dict=dict[str, Text])] = Field(
            min_length=1, max_length=limits.max_texts,
            description="inputs: on a task with one text field, the text itself (or an object with that field); "
                        "on several fields, an object with all of them, e.g. {\"premise\": ..., \"hypothesis\": ...}")

    return PredictRequest


# --- the app --------------------------------------------------------------------------------


def build_app(engine: Engine, *, limits: Limits = Limits(), allow_dirs: Sequence[Path] = ()) -> FastAPI:
    """The server's ASGI app on `engine`'s tasks. `allow_dirs` (resolved directories) are where
    `POST /v1/tasks` may load tasks from; none = hot loading is off."""
    allow_dirs = [Path(d).resolve() for d in allow_dirs]
    batcher = MicroBatcher(lambda items: engine.run(engine.predict, items), max_batch_size=limits.max_batch_size,
                           max_wait_s=limits.max_wait_ms / 1000, max_queue=limits.max_queue)
    metrics = ServerMetrics(queue_depth=lambda: batcher.in_flight, tasks=lambda: len(engine.tasks()))
    batcher.on_batch = metrics.observe_batch
    generations: set[threading.Event] = set()  # the cancel events of the generations running

    def drain() -> None:
        """Answer what has not started 503 (texts in the queue) and end the generations running."""
        batcher.fail_waiting(QueueClosed("the server is stopping"))
        for cancel in list(generations):
            cancel.set()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loop = asyncio.get_running_loop()
        # Called by `serve`'s server on SIGTERM or Ctrl-C (from any thread): drain before uvicorn's
        # graceful period ends and it cancels what is left.
        app.state.stopping = lambda: loop.call_soon_threadsafe(loop.call_later, GRACEFUL_SHUTDOWN_S - DRAIN_MARGIN_S, drain)
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="prompttune serve", lifespan=lifespan,
                  description="Many prompt-learning tasks on one frozen model. Generation tasks also speak the "
                              "OpenAI completions API (model = the task's name).")
    app.add_exception_handler(APIError, api_error_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(HTTPException, http_error_handler)
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)
    app.add_middleware(CountRequests, metrics=metrics, routes=app.router.routes)

    PredictRequest = predict_request(limits)
    TaskName = Annotated[str, PathParam(description="a loaded task's name (GET /v1/tasks)")]

    @app.post("/v1/tasks/{task}/predict", response_model=PredictResponse, tags=["tasks"],
              responses={404: {"description": "no such task"}, 503: {"description": "queue full; retry after Retry-After s"}})
    async def predict(task: TaskName, body: PredictRequest) -> PredictResponse:
        """Label each text with the task: the label and every label's probability."""
        info = find_task(engine, task)
        if info.generation:
            raise APIError(400, f"task {task!r} generates text: use POST /v1/completions with model={task!r}")
        examples = [input_example(text, info.text_fields, i) for i, text in enumerate(body.texts)]
        try:
            predictions = await batcher.submit([(task, ex) for ex in examples])
        except QueueFull as e:
            raise APIError(503, f"the server is busy: {e}; retry later", headers={"Retry-After": str(RETRY_AFTER_S)}) from None
        except QueueClosed as e:
            raise APIError(503, f"{e}; retry later", headers={"Retry-After": str(RETRY_AFTER_S)}) from None
        except KeyError as e:  # unloaded while its texts waited
            raise APIError(404, e.args[0]) from None
        except PromptTuneError as e:
            raise APIError(400, str(e)) from None
        return PredictResponse(task=task, predictions=[LabelProbabilities(label=p.label, probabilities=p.probabilities)
                                                       for p in predictions])

    @app.get("/v1/tasks", response_model=TasksOut, tags=["tasks"])
    async def list_tasks() -> TasksOut:
        """The loaded tasks, with what each stores and the memory it costs."""
        return TasksOut(model=engine.model_name, tasks=[task_out(info) for info in engine.tasks()])

    @app.post("/v1/tasks", response_model=TaskOut, status_code=201, tags=["tasks"],
              responses={403: {"description": "hot loading is off, or the path is outside --allow-dir"},
                         400: {"description": "not a task artifact, corrupt, or made on another backbone"},
                         409: {"description": "the name is taken"}})
    async def load_task(body: LoadTask) -> TaskOut:
        """Load a task artifact from a directory under one of the server's --allow-dir directories."""
        path = allowed_path(body.path, allow_dirs)
        name = body.name or task_name(path, loc=("body", "name"))
        try:
            info = await engine.run(engine.add, path, name)
        except ConfigError as e:  # the name is taken
            raise APIError(409, str(e), loc=("body", "name")) from None
        except PromptTuneError as e:
            raise APIError(400, str(e), loc=("body", "path")) from None
        log.info("loaded task %r from %s", name, path)
        return task_out(info)

    @app.delete("/v1/tasks/{task}", response_model=Removed, tags=["tasks"], responses={404: {"description": "no such task"}})
    async def unload_task(task: TaskName) -> Removed:
        """Unload a task; its texts still waiting fail with 404."""
        try:
            await engine.run(engine.remove, task)
        except KeyError as e:
            raise APIError(404, e.args[0]) from None
        log.info("unloaded task %r", task)
        return Removed(removed=task)

    @app.get("/health", response_model=Health, tags=["server"])
    async def health() -> Health:
        pool = engine.pool
        return Health(status="ok", model=engine.model_name, device=str(pool.device), dtype=dtype_name(pool.dtype),
                      quantization=pool.quantization or "none", tasks=len(engine.tasks()))

    @app.get("/metrics", tags=["server"], response_class=Response)
    async def prometheus_metrics() -> Response:
        """Counters, histograms and gauges in Prometheus' text format (see `serving/metrics.py`)."""
        return Response(metrics.render(), media_type=metrics.content_type)

    app.include_router(openai_routes(engine, batcher, limits, generations))
    return app


def find_task(engine: Engine, name: str) -> TaskInfo:
    try:
        return engine.task(name)
    except KeyError as e:
        raise APIError(404, e.args[0]) from None


def task_out(info: TaskInfo) -> TaskOut:
    # What /v1/chat/completions answers: a generation task of one text field whose tokenizer has a chat template.
    tokenizer = getattr(info.classifier, "tokenizer", None)
    chat = info.generation and len(info.text_fields) == 1 and has_chat_template(tokenizer)
    return TaskOut(**info.public(), chat=chat)


def input_example(text: str | dict, fields: list[str], index: int) -> dict:
    """One request text as an example of a task reading `fields` (`data.examples_from_texts`' rules);
    a 422 naming `texts[index]` if it does not fit."""
    loc = ("body", "texts", index)
    if isinstance(text, dict):
        missing = [f for f in fields if f not in text]
        if missing:
            raise APIError(422, f"texts[{index}] lacks field(s) {missing}; the task reads {fields}", loc=loc)
        text = json.dumps(text, ensure_ascii=False)
    try:
        return examples_from_texts([text], fields, name=f"texts[{index}]")[0]
    except DataError as e:
        raise APIError(422, str(e), loc=loc) from None


def allowed_path(path: str, allow_dirs: Sequence[Path]) -> Path:
    """`path` with symlinks resolved, if it lies in one of `allow_dirs`; else a 403 that says why."""
    if not allow_dirs:
        raise APIError(403, "loading tasks at run time is off: start the server with --allow-dir DIR to allow "
                            "loading from DIR", loc=("body", "path"))
    try:
        resolved = Path(path).resolve()
    except (ValueError, OSError) as e:  # a NUL byte, a symlink loop
        raise APIError(422, f"{path!r} is not a usable path: {e}", loc=("body", "path")) from None
    if not any(resolved.is_relative_to(d) for d in allow_dirs):
        raise APIError(403, f"{path!r} resolves to {str(resolved)!r}, outside the directories tasks may be loaded from: "
                            f"{[str(d) for d in allow_dirs]}", loc=("body", "path"))
    return resolved


def task_name(path: Path, *, loc: tuple | None = None) -> str:
    """The default name of the task in `path`: the directory's name, if it can be one."""
    name = path.name
    if not re.fullmatch(TASK_NAME, name):
        message = f"the directory name {name!r} cannot be a task name ({TASK_NAME_RULE})"
        if loc is None:
            raise ConfigError(message)
        raise APIError(422, message + "; give a name", loc=loc)
    return name


# --- running it -----------------------------------------------------------------------------


def serve(dirs: Sequence[str], *, host: str = "127.0.0.1", port: int = 8000, device: str = "auto", dtype: str = "auto",
          limits: Limits = Limits(), allow_dirs: Sequence[str] = (), log_level: str = "info",
          quantization: str | None = None) -> None:
    """Load the tasks in `dirs` on one backbone and serve them on host:port until SIGTERM or Ctrl-C.

    The backbone is loaded on `device` in `dtype` (`devices.resolve_device`, `resolve_dtype`) and quantized
    as `quantization` says (None: as the first task's base was in training; `prompttune.quantization`).

    Everything that can be wrong at start (a directory that is not a task, tasks on different
    backbones, an --allow-dir that is not a directory, a port in use) raises `PromptTuneError`
    before the server listens."""
    allowed = [checked_dir(d) for d in allow_dirs]
    if limits.max_texts > limits.max_queue:
        raise ConfigError(f"--max-texts {limits.max_texts} is more than --max-queue {limits.max_queue}: "
                          "such a request could never be admitted")
    with closing(listen(host, port)) as sock:  # before the model loads: a port in use fails at once
        engine = Engine(TaskPool(device=device, dtype=dtype, quantization=quantization, max_batch_size=limits.max_batch_size))
        try:
            for given in dirs:
                name, d = named_dir(given)
                note = dtype_note(d, DTYPES[engine.add(d, name).trained_dtype], engine.pool.dtype)
                if note is not None:
                    print(note, file=sys.stderr)
            app = build_app(engine, limits=limits, allow_dirs=allowed)
            base = f", {engine.pool.quantization} base" if engine.pool.quantization not in (None, "none") else ""
            print(f"prompttune serve: {len(dirs)} task(s) on {engine.model_name} ({engine.pool.device}, "
                  f"{dtype_name(engine.pool.dtype)}{base}) at http://{url_host(host)}:{sock.getsockname()[1]} "
                  f"(API docs: /docs)", file=sys.stderr, flush=True)
            config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S)
            DrainingServer(config).run(sockets=[sock])
        finally:
            engine.close()


def named_dir(given: str) -> tuple[str, str]:
    """A `serve` argument as (task name, directory): `NAME=DIR`, or `DIR` named after its directory.
    (A directory whose own name holds '=' is given as `NAME=DIR` too.)

    Example:
        >>> named_dir("sst2=runs/prompt_tuning"), named_dir("runs/prompt_tuning")
        (('sst2', 'runs/prompt_tuning'), ('prompt_tuning', 'runs/prompt_tuning'))
    """
    name, sep, d = given.partition("=")
    if sep and re.fullmatch(TASK_NAME, name):
        if not d:
            raise ConfigError(f"{given!r}: no directory after '='; give NAME=DIR")
        return name, d
    if sep and not Path(given).exists():
        raise ConfigError(f"{given!r}: {name!r} cannot be a task name ({TASK_NAME_RULE})")
    return task_name(Path(given).resolve()), given


class DrainingServer(uvicorn.Server):
    """uvicorn's server that, on SIGTERM or Ctrl-C, also tells the app (`app.state.stopping`), which
    answers 503 what it cannot finish within the graceful period (`DRAIN_MARGIN_S`)."""

    def handle_exit(self, sig, frame) -> None:
        stopping = getattr(self.config.app.state, "stopping", None)
        if not self.should_exit and stopping is not None:
            stopping()
        super().handle_exit(sig, frame)


def checked_dir(path: str) -> Path:
    resolved = Path(path).resolve()
    if not resolved.is_dir():
        raise ConfigError(f"--allow-dir {path!r} is not a directory")
    return resolved


def listen(host: str, port: int) -> socket.socket:
    """A TCP socket bound to host:port; `ConfigError` naming both if it cannot be."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ConfigError(f"cannot listen on {url_host(host)}:{port}: {e.strerror}") from None
    return sock


def url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
