"""`prompttune serve`: the real server on a free loopback port, many tasks of different methods on one
tiny BERT, checked over HTTP.

- a micro-batch of texts from every task gives each text what its task alone gives (`load_artifact`);
- tasks load and unload while requests run; 16 clients at once all get their own answers;
- every bad request is refused with its status and the field or reason named, and the loaded tasks
  keep serving; a full queue answers 503 with Retry-After;
- /metrics parses as Prometheus text; /health, /docs;
- the command: startup errors are one line and exit 2; SIGTERM lets an in-flight request finish.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

import tiny_models
from live_server import running
from prompttune import TaskSpec, build_classifier, load_artifact, save_artifact
from prompttune.cli import main
from prompttune.evaluation import predict_scores
from prompttune.serving import Prediction, TaskPool
from prompttune.serving.batcher import MicroBatcher, QueueFull
from prompttune.serving.engine import Engine
from prompttune.serving.limits import Limits
from prompttune.serving.server import build_app

TEMPLATE = "{text} it was {mask} ."
VERBALIZER = {"0": ["bad", "wonderful"], "1": ["good"]}
TASKS = {  # name: (method, template, options): one task per method, all on one backbone
    "zero-shot": ("zero-shot", TEMPLATE, {}),
    "prompt-tuning": ("prompt-tuning", "{soft:3} {text} it was {mask} .", {}),
    "p-tuning": ("p-tuning", "{soft:2} {text} it was {mask} .", {"encoder": "mlp"}),
    "prefix-tuning": ("prefix-tuning", TEMPLATE, {"prompt_length": 3, "reparam_hidden": 16}),
    "p-tuning-v2-head": ("p-tuning-v2", None, {"prompt_length": 3, "head": True}),
    "lora": ("lora", TEMPLATE, {"lora_rank": 4}),
    "adapter": ("adapter", TEMPLATE, {"reduction_factor": 8}),
    "bitfit": ("bitfit", TEMPLATE, {}),
}
PAIR = "pair"  # a task with two text fields
TEXTS = ["great fun", "a terrible , boring movie .", "very good", "the worst movie"]
TIMEOUT = httpx.Timeout(30.0)


def save_task(directory: Path, model_dir: Path, method: str, template: str | None, options: dict, *, seed: int = 0,
              fields: tuple[str, ...] = ("text",), verbalizer: dict | None = VERBALIZER) -> Path:
    """A task artifact whose trained parameters are seeded random values: the server must give
    whatever the task computes, trained or not."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        spec = TaskSpec(max_length=64, method=method, model=str(model_dir), text_fields=list(fields), labels=["0", "1"],
                        template=template, verbalizer=verbalizer if template else None, options=options)
        clf, fp = build_classifier(spec)
        with torch.no_grad():
            for p in clf.parameters():
                if p.requires_grad:
                    p.add_(torch.randn_like(p) * 0.2)
    save_artifact(directory, spec, clf, fp)
    return directory


@pytest.fixture(scope="module")
def root(tmp_path_factory, bert_dir) -> Path:
    """served/: the tasks the server starts with; spare/: what hot loads may take (good, corrupt, made on
    another backbone, a symlink out); outside/: a good task outside the allowed directory."""
    root = tmp_path_factory.mktemp("serve")
    for name, (method, template, options) in TASKS.items():
        save_task(root / "served" / name, bert_dir, method, template, options)
    save_task(root / "served" / PAIR, bert_dir, "prompt-tuning", "{soft:2} {premise} ? {mask} , {hypothesis}", {},
              fields=("premise", "hypothesis"), verbalizer={"0": ["no"], "1": ["yes"]})
    spare = root / "spare"
    save_task(spare / "late", bert_dir, "prompt-tuning", "{soft:3} {text} it was {mask} .", {}, seed=1)
    shutil.copytree(spare / "late", spare / "corrupt")
    (spare / "corrupt" / "weights.safetensors").write_bytes(b"not safetensors")
    save_task(spare / "other-backbone", tiny_models.make_roberta(root / "roberta"), "prompt-tuning",
              "{soft:3} {text} it was {mask} .", {})
    (spare / "not-a-task").mkdir()
    save_task(root / "outside" / "task", bert_dir, "zero-shot", TEMPLATE, {})
    (spare / "escape").symlink_to(root / "outside" / "task", target_is_directory=True)
    shutil.copytree(spare / "late", spare / "unworded")  # a hand-edited config: label '1' lost its words
    config = json.loads((spare / "unworded" / "config.json").read_text())
    del config["verbalizer"]["1"]
    (spare / "unworded" / "config.json").write_text(json.dumps(config))
    return root


@pytest.fixture(scope="module")
def engine(root):
    engine = Engine(TaskPool(device="cpu"))
    for d in sorted((root / "served").iterdir()):
        engine.add(d, d.name)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def url(engine, root):
    """The server most tests use: hot loading allowed from spare/."""
    with running(build_app(engine, limits=Limits(max_wait_ms=10), allow_dirs=[root / "spare"])) as url:
        yield url


_expected: dict[tuple[str, str], dict[str, float]] = {}


def expected(root: Path, task: str, text: str) -> dict[str, float]:
    """What the task alone gives `text`: the artifact loaded on its own, no server."""
    if (task, text) not in _expected:
        path = root / "served" / task if (root / "served" / task).exists() else root / "spare" / task
        clf, config = load_artifact(path)
        probs = predict_scores(clf, [{"text": text}]).softmax(-1)[0]
        _expected[task, text] = dict(zip(config["labels"], probs.tolist()))
    return _expected[task, text]


def assert_close(got: dict, want: dict) -> None:
    assert got["probabilities"].keys() == want.keys()
    for label, p in want.items():
        assert got["probabilities"][label] == pytest.approx(p, abs=1e-5)
    assert got["label"] == max(want, key=want.get)


def predict(url: str, task: str, texts: list, client: httpx.Client | None = None) -> httpx.Response:
    client = client or httpx.Client(timeout=TIMEOUT)
    return client.post(f"{url}/v1/tasks/{task}/predict", json={"texts": texts})


def metric_samples(url: str) -> dict:
    """{(sample name, frozenset of labels): value} from /metrics, parsed as Prometheus text."""
    text = httpx.get(f"{url}/metrics", timeout=TIMEOUT).text
    return {(s.name, frozenset(s.labels.items())): s.value for family in text_string_to_metric_families(text)
            for s in family.samples}


# --- results ----------------------------------------------------------------------------------


def test_one_micro_batch_of_every_task_gives_each_text_its_task_alone_result(engine, root):
    # The batch closes when full (8 tasks x 2 texts), so all requests share one pool call.
    limits = Limits(max_batch_size=2 * len(TASKS), max_wait_ms=10_000)
    with running(build_app(engine, limits=limits)) as url, ThreadPoolExecutor(len(TASKS)) as pool:
        responses = dict(zip(TASKS, pool.map(lambda task: predict(url, task, TEXTS[:2]), TASKS)))
        batches = metric_samples(url)
    assert batches["prompttune_batch_size_count", frozenset()] == 1
    assert batches["prompttune_batch_size_sum", frozenset()] == 2 * len(TASKS)
    for task, response in responses.items():
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["task"] == task and len(body["predictions"]) == 2
        for text, got in zip(TEXTS[:2], body["predictions"]):
            assert_close(got, expected(root, task, text))


def test_tasks_differ_so_the_comparison_means_something(root):
    scores = {task: round(expected(root, task, TEXTS[0])["1"], 4) for task in TASKS}
    assert len(set(scores.values())) == len(TASKS), scores


def test_a_task_with_two_fields_takes_objects(url, root):
    r = predict(url, PAIR, [{"premise": "great fun", "hypothesis": "it was good"}, '{"premise": "a", "hypothesis": "b"}'])
    assert r.status_code == 200, r.text
    clf, config = load_artifact(root / "served" / PAIR)
    want = predict_scores(clf, [{"premise": "great fun", "hypothesis": "it was good"}]).softmax(-1)[0]
    assert r.json()["predictions"][0]["probabilities"]["1"] == pytest.approx(want[1].item(), abs=1e-5)
    r = predict(url, PAIR, [{"premise": "great fun"}])
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "texts", 0]
    assert "lacks field(s) ['hypothesis']" in r.json()["detail"][0]["msg"]
    r = predict(url, PAIR, ["just text"])
    assert r.status_code == 422 and "is not a JSON object; this task reads fields ['premise', 'hypothesis']" in r.text


def test_sixteen_clients_at_once_each_get_their_own_answers(url, root):
    def client(i: int) -> list[tuple[str, str, httpx.Response]]:
        out = []
        with httpx.Client(timeout=TIMEOUT) as c:
            for j in range(4):
                task, text = list(TASKS)[(i + j) % len(TASKS)], TEXTS[(i * 3 + j) % len(TEXTS)]
                out.append((task, text, predict(url, task, [text], c)))
        return out

    with ThreadPoolExecutor(16) as pool:
        results = [r for rs in pool.map(client, range(16)) for r in rs]
    assert len(results) == 64
    for task, text, response in results:
        assert response.status_code == 200, response.text
        assert_close(response.json()["predictions"][0], expected(root, task, text))


# --- tasks: list, hot load, unload ----------------------------------------------------------------


def test_tasks_are_listed_with_method_labels_and_sizes(url, bert_dir):
    body = httpx.get(f"{url}/v1/tasks", timeout=TIMEOUT).json()
    tasks = {t["name"]: t for t in body["tasks"]}
    assert set(TASKS) | {PAIR} <= set(tasks)
    assert tasks["prompt-tuning"]["method"] == "prompt-tuning" and tasks["prompt-tuning"]["labels"] == ["0", "1"]
    assert tasks["prompt-tuning"]["stored_numbers"] == 3 * tiny_models.HIDDEN and tasks["prompt-tuning"]["bytes"] > 0
    assert tasks["prompt-tuning"]["own_model_bytes"] == 0
    assert tasks["bitfit"]["own_model_bytes"] > 0  # it changes the backbone's own biases: a copy of its own
    assert tasks["p-tuning-v2-head"]["template"] is None and tasks[PAIR]["text_fields"] == ["premise", "hypothesis"]
    assert body["model"] == str(bert_dir)


def test_tasks_load_and_unload_while_requests_run(url, root):
    stop = threading.Event()

    def hammer() -> list[httpx.Response]:
        out = []
        with httpx.Client(timeout=TIMEOUT) as c:
            while not stop.is_set() and len(out) < 200:
                out.append(predict(url, "prompt-tuning", TEXTS[:2], c))
        return out

    with ThreadPoolExecutor(3) as pool:
        running_requests = [pool.submit(hammer) for _ in range(3)]
        with httpx.Client(timeout=TIMEOUT) as c:
            r = c.post(f"{url}/v1/tasks", json={"path": str(root / "spare" / "late")})
            assert r.status_code == 201, r.text
            assert r.json()["name"] == "late" and r.json()["path"] == str((root / "spare" / "late").resolve())
            r = predict(url, "late", TEXTS, c)
            assert r.status_code == 200, r.text
            for text, got in zip(TEXTS, r.json()["predictions"]):
                assert_close(got, expected(root, "late", text))
            assert c.delete(f"{url}/v1/tasks/late").json() == {"removed": "late"}
            r = predict(url, "late", TEXTS, c)
            assert r.status_code == 404 and "no task named 'late'" in r.json()["detail"]
            assert c.delete(f"{url}/v1/tasks/late").status_code == 404
        stop.set()
        answered = [r for f in running_requests for r in f.result()]
    assert answered and all(r.status_code == 200 for r in answered)
    for r in answered:
        assert_close(r.json()["predictions"][0], expected(root, "prompt-tuning", TEXTS[0]))


@pytest.mark.parametrize(("body", "status", "reason"), [
    ({"path": "outside/task"}, 403, "outside the directories tasks may be loaded from"),
    ({"path": "spare/../outside/task"}, 403, "outside the directories tasks may be loaded from"),
    ({"path": "spare/escape"}, 403, "resolves to"),  # a symlink inside, pointing out
    ({"path": "spare/corrupt", "name": "c"}, 400, "does not match the checksum in config.json"),
    ({"path": "spare/other-backbone"}, 400, "other-backbone: this task artifact was made for backbone"),
    ({"path": "spare/not-a-task"}, 400, "is not a task artifact: it has no config.json"),
    ({"path": "spare/late", "name": "prompt-tuning"}, 409, "a task named 'prompt-tuning' is already loaded"),
    ({"path": "spare/late", "name": "no spaces"}, 422, "String should match pattern"),
    ({"path": "spare/late", "nme": "x"}, 422, "Extra inputs are not permitted"),
    ({"path": "spare/late\x00x", "name": "nul"}, 422, "is not a usable path"),
    ({"path": "spare/unworded", "name": "u"}, 400, "every label needs its words"),
])
def test_a_refused_load_says_why_and_the_loaded_tasks_keep_serving(url, root, body, status, reason):
    body = {**body, "path": str(root / body["path"])}
    r = httpx.post(f"{url}/v1/tasks", json=body, timeout=TIMEOUT)
    assert r.status_code == status and reason in r.text, r.text
    assert predict(url, "lora", TEXTS[:1]).status_code == 200
    assert {t["name"] for t in httpx.get(f"{url}/v1/tasks", timeout=TIMEOUT).json()["tasks"]} == set(TASKS) | {PAIR}


def test_without_allow_dir_loading_at_run_time_is_off(engine, root):
    with running(build_app(engine)) as url:
        r = httpx.post(f"{url}/v1/tasks", json={"path": str(root / "spare" / "late")}, timeout=TIMEOUT)
    assert r.status_code == 403 and "start the server with --allow-dir DIR" in r.json()["detail"]


# --- bad requests -------------------------------------------------------------------------------------


LONG = "x" * (Limits().max_text_chars + 1)


@pytest.mark.parametrize(("body", "loc", "message"), [
    ({"texts": []}, ["body", "texts"], "at least 1 item"),
    ({"texts": [""]}, ["body", "texts", 0], "at least 1 character"),
    ({"texts": ["ok", "   "]}, ["body", "texts", 1], "has no text (empty, or only whitespace or invisible characters)"),
    ({"texts": ["\x00", "ok"]}, ["body", "texts", 0], "has no text (empty, or only whitespace or invisible characters)"),
    ({"texts": ["ok", "\u200b\u200b"]}, ["body", "texts", 1], "only whitespace or invisible characters"),
    ({"texts": [LONG]}, ["body", "texts", 0], f"at most {Limits().max_text_chars} characters"),
    ({"texts": ["a"] * (Limits().max_texts + 1)}, ["body", "texts"], f"at most {Limits().max_texts} items"),
    ({"texts": "a gripping film"}, ["body", "texts"], "a valid list"),
    ({"texts": [3]}, ["body", "texts", 0], "a valid string"),
    ({"texts": [["a"]]}, ["body", "texts", 0], "a valid string"),
    ({"texts": [{"text": 3}]}, ["body", "texts", 0, "text"], "a valid string"),
    ({}, ["body", "texts"], "Field required"),
    ({"texts": ["a"], "labels": ["0"]}, ["body", "labels"], "Extra inputs are not permitted"),
])
def test_a_bad_predict_request_is_422_naming_the_field(url, body, loc, message):
    r = httpx.post(f"{url}/v1/tasks/lora/predict", json=body, timeout=TIMEOUT)
    assert r.status_code == 422, r.text
    first = r.json()["detail"][0]
    assert first["loc"] == loc and message in first["msg"], first


def test_not_json_an_unknown_task_and_a_body_too_long(url):
    r = httpx.post(f"{url}/v1/tasks/lora/predict", content=b"{texts:", headers={"content-type": "application/json"})
    assert r.status_code == 422 and "JSON" in r.text
    r = predict(url, "no-such-task", ["a"])
    assert r.status_code == 404 and r.json()["detail"].startswith("no task named 'no-such-task'; loaded: [")
    r = httpx.post(f"{url}/v1/tasks/lora/predict", content=b" " * (Limits().max_body_bytes + 1),
                   headers={"content-type": "application/json"}, timeout=TIMEOUT)
    assert r.status_code == 413 and "longer than the server's limit" in r.json()["detail"]


@pytest.mark.parametrize("body", [b'{"texts": ["caf\xe9"]}', b"[" * 5000 + b"]" * 5000],
                         ids=["latin-1 byte", "nested 5000 deep"])
def test_a_body_that_cannot_be_parsed_is_422_saying_why(url, body):
    r = httpx.post(f"{url}/v1/tasks/lora/predict", content=body, headers={"content-type": "application/json"},
                   timeout=TIMEOUT)
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["body"] and "not UTF-8, or it is nested too deeply" in r.text


def test_the_largest_valid_request_fits_the_body_limit_however_json_escapes_it():
    limits = Limits()
    emoji = json.dumps({"texts": ["\N{GRINNING FACE}" * limits.max_text_chars] * limits.max_texts})  # ensure_ascii: 12 bytes each
    assert len(emoji) <= limits.max_body_bytes, "a valid request of non-BMP characters would be refused (413)"
    nul = json.dumps({"texts": ["\x00" * limits.max_text_chars] * limits.max_texts})
    assert len(nul) <= limits.max_body_bytes


def test_a_413_decided_before_routing_is_counted_under_its_route(engine):
    with running(build_app(engine)) as url:
        r = httpx.post(f"{url}/v1/tasks/lora/predict", content=b" " * (Limits().max_body_bytes + 1),
                       headers={"content-type": "application/json"}, timeout=TIMEOUT)
        assert r.status_code == 413
        samples = metric_samples(url)
    assert samples["prompttune_requests_total", frozenset({"endpoint": "/v1/tasks/{task}/predict", "code": "413"}.items())] == 1


class HeldPool:
    """A stand-in for `TaskPool` with its tasks, whose forward pass holds the pool's lock until the test
    releases it, as `TaskPool`'s does for a whole pass."""

    device, dtype, quantization, backbone = torch.device("cpu"), torch.float32, None, None

    def __init__(self, tasks: list):
        self._tasks, self.lock, self.release = tasks, threading.Lock(), threading.Event()

    def tasks(self) -> list:
        with self.lock:
            return list(self._tasks)

    def predict_mixed(self, items: list) -> list[Prediction]:
        with self.lock:
            assert self.release.wait(timeout=30)
            return [Prediction("1", {"0": 0.25, "1": 0.75}) for _ in items]


def wait_for_queue_depth(url: str, depth: int, first) -> None:
    deadline = time.monotonic() + 10
    while metric_samples(url)["prompttune_queue_depth", frozenset()] < depth:
        assert time.monotonic() < deadline and not first.done(), "the request never queued"
        time.sleep(0.02)


def test_a_full_queue_answers_503_with_retry_after(engine):
    pool = HeldPool(engine.tasks())
    held = Engine(pool)
    with running(build_app(held, limits=Limits(max_queue=4, max_texts=4, max_wait_ms=0))) as url, \
            ThreadPoolExecutor(1) as clients:
        first = clients.submit(predict, url, "lora", TEXTS)  # 4 texts: the queue is full until the model answers
        wait_for_queue_depth(url, 4, first)
        r = predict(url, "adapter", ["one more"])
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert "4 texts are in flight; 1 more would pass the limit of 4" in r.json()["detail"]
        pool.release.set()
        assert first.result(timeout=30).status_code == 200
        assert predict(url, "adapter", ["one more"]).status_code == 200
        assert metric_samples(url)["prompttune_errors_total", frozenset({("code", "503")})] == 1
    held.close()


def test_while_the_model_runs_the_server_still_answers_and_queues(engine):
    pool = HeldPool(engine.tasks())
    held = Engine(pool)
    with running(build_app(held, limits=Limits(max_wait_ms=0))) as url, ThreadPoolExecutor(2) as clients:
        first = clients.submit(predict, url, "lora", TEXTS[:1])
        wait_for_queue_depth(url, 1, first)  # its forward pass holds the pool's lock now
        quick = httpx.Timeout(5.0)
        assert len(httpx.get(f"{url}/v1/tasks", timeout=quick).json()["tasks"]) == len(TASKS) + 1
        assert httpx.get(f"{url}/health", timeout=quick).status_code == 200
        second = clients.submit(predict, url, "adapter", TEXTS[:2])
        wait_for_queue_depth(url, 3, second)  # admitted and queued for the next batch
        pool.release.set()
        assert first.result(timeout=30).status_code == 200 and second.result(timeout=30).status_code == 200
    held.close()


# --- server endpoints -------------------------------------------------------------------------------


def test_metrics_count_requests_errors_batches_and_latency(engine):
    with running(build_app(engine)) as url:
        for _ in range(3):
            assert predict(url, "adapter", TEXTS[:2]).status_code == 200
        assert predict(url, "nothing", ["a"]).status_code == 404
        assert predict(url, "adapter", []).status_code == 422
        assert httpx.get(f"{url}/not/a/route").status_code == 404
        samples = metric_samples(url)
    route = "/v1/tasks/{task}/predict"
    assert samples["prompttune_requests_total", frozenset({("endpoint", route), ("code", "200")})] == 3
    assert samples["prompttune_requests_total", frozenset({("endpoint", route), ("code", "404")})] == 1
    assert samples["prompttune_requests_total", frozenset({("endpoint", route), ("code", "422")})] == 1
    assert samples["prompttune_requests_total", frozenset({("endpoint", "unmatched"), ("code", "404")})] == 1
    assert samples["prompttune_errors_total", frozenset({("code", "404")})] == 2
    assert samples["prompttune_errors_total", frozenset({("code", "422")})] == 1
    assert samples["prompttune_batch_size_sum", frozenset()] == 6
    assert samples["prompttune_request_latency_seconds_count", frozenset({("endpoint", route)})] == 5
    assert samples["prompttune_queue_depth", frozenset()] == 0
    assert samples["prompttune_tasks", frozenset()] == len(TASKS) + 1


def test_health_and_api_docs(url):
    health = httpx.get(f"{url}/health", timeout=TIMEOUT).json()
    assert health == {"status": "ok", "model": health["model"], "device": "cpu", "dtype": "float32", "quantization": "none",
                      "tasks": len(TASKS) + 1}
    assert httpx.get(f"{url}/docs", timeout=TIMEOUT).status_code == 200
    schema = httpx.get(f"{url}/openapi.json", timeout=TIMEOUT).json()
    assert {"/v1/tasks/{task}/predict", "/v1/tasks", "/v1/tasks/{task}", "/v1/completions", "/v1/chat/completions",
            "/v1/models", "/health", "/metrics"} <= set(schema["paths"])
    texts = schema["components"]["schemas"]["PredictRequest"]["properties"]["texts"]
    assert texts["maxItems"] == Limits().max_texts  # the limits are in the types


# --- one bad item fails only its own request ------------------------------------------------------------


def test_a_failing_item_fails_only_its_own_request():
    async def run_batch(items):
        return [ValueError(f"bad {x}") if x == "bad" else x.upper() for x in items]

    async def scenario():
        batcher = MicroBatcher(run_batch, max_batch_size=8, max_wait_s=0.05, max_queue=8)
        batcher.start()
        try:
            good = asyncio.create_task(batcher.submit(["a", "b"]))
            bad = asyncio.create_task(batcher.submit(["c", "bad"]))
            assert await good == ["A", "B"]
            with pytest.raises(ValueError, match="bad bad"):
                await bad
            with pytest.raises(QueueFull, match="would pass the limit of 8"):
                await batcher.submit(["x"] * 9)
            assert batcher.in_flight == 0
        finally:
            await batcher.stop()

    asyncio.run(scenario())


def test_a_batch_with_a_task_removed_meanwhile_answers_the_other_items(engine, root):
    predictions = engine.predict([("lora", {"text": TEXTS[0]}), ("gone", {"text": TEXTS[0]}), ("adapter", {"text": TEXTS[1]})])
    assert isinstance(predictions[1], KeyError)
    assert predictions[0].probabilities["1"] == pytest.approx(expected(root, "lora", TEXTS[0])["1"], abs=1e-5)
    assert predictions[2].probabilities["1"] == pytest.approx(expected(root, "adapter", TEXTS[1])["1"], abs=1e-5)


# --- the command --------------------------------------------------------------------------------------


def test_startup_errors_are_one_line_and_exit_2(root, tmp_path, capsys):
    for args, message in [
        ([str(tmp_path / "missing")], "is not a task artifact: it has no config.json"),
        ([str(root / "served" / "lora"), str(root / "spare" / "other-backbone")], "made for backbone"),
        ([str(root / "served" / "lora"), "--allow-dir", str(tmp_path / "nowhere")], "--allow-dir"),
        ([str(root / "served" / "lora"), "--max-texts", "100", "--max-queue", "10"], "--max-texts 100 is more than"),
    ]:
        assert main(["serve", *args, "--device", "cpu"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("prompttune serve: error: ") and message in err[-1], err
        assert not any("Traceback" in line for line in err)


def test_a_port_in_use_is_one_line_and_exit_2(root, capsys):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert main(["serve", str(root / "served" / "lora"), "--device", "cpu", "--port", str(taken.getsockname()[1])]) == 2
    assert "cannot listen on 127.0.0.1:" in capsys.readouterr().err


def test_the_command_serves_and_sigterm_lets_an_in_flight_request_finish(root):
    command = [sys.executable, "-m", "prompttune", "serve", str(root / "served" / "lora"), str(root / "served" / "adapter"),
               "--port", "0", "--device", "cpu", "--max-wait-ms", "2000", "--log-level", "warning"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr], daemon=True)
    reader.start()
    try:
        url = None
        deadline = time.monotonic() + 60
        while url is None:
            found = re.search(r"prompttune serve: 2 task\(s\) on .* at (http://\S+)", lines.get(timeout=60))
            url = found and found.group(1)
            assert time.monotonic() < deadline, "the server never said where it listens"
        while True:  # the socket listens before the app has started
            try:
                httpx.get(f"{url}/health", timeout=TIMEOUT).raise_for_status()
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the server never answered"
                time.sleep(0.1)
        with ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(predict, url, "lora", TEXTS[:1])  # waits 2 s for its batch to fill
            while metric_samples(url)["prompttune_queue_depth", frozenset()] < 1:
                assert time.monotonic() < deadline and not in_flight.done()
                time.sleep(0.02)
            proc.send_signal(signal.SIGTERM)
            response = in_flight.result(timeout=30)
        assert response.status_code == 200, response.text
        assert response.json()["predictions"][0]["label"] in ("0", "1")
        assert proc.wait(timeout=30) == -signal.SIGTERM  # uvicorn raises the signal again once it has shut down
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{url}/health", timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(timeout=10)
    rest = "".join(lines.queue)
    assert "Traceback" not in rest and "ERROR" not in rest, rest


def test_serve_names_a_task_name_equals_dir_or_after_its_directory(tmp_path):
    from prompttune.errors import ConfigError
    from prompttune.serving.server import named_dir

    assert named_dir("sst2=runs/prompt_tuning") == ("sst2", "runs/prompt_tuning")
    assert named_dir("runs/prompt_tuning") == ("prompt_tuning", "runs/prompt_tuning")
    odd = tmp_path / "a=b"  # a directory whose name has '=' is named explicitly
    odd.mkdir()
    assert named_dir(f"odd={odd}") == ("odd", str(odd))
    with pytest.raises(ConfigError, match="'has space' cannot be a task name"):
        named_dir("has space=runs/x")
    with pytest.raises(ConfigError, match="'x=': no directory after '='; give NAME=DIR"):
        named_dir("x=")


def test_a_stopping_server_answers_what_it_cannot_finish_503_with_retry_after(engine, monkeypatch):
    """SIGTERM (`app.state.stopping`): what has not started by the end of the graceful period is answered
    503 with Retry-After (not cut off by uvicorn as a plain-text 500)."""
    import prompttune.serving.server as server

    monkeypatch.setattr(server, "GRACEFUL_SHUTDOWN_S", server.DRAIN_MARGIN_S + 0.3)
    pool = HeldPool(engine.tasks())
    held = Engine(pool)
    app = build_app(held, limits=Limits(max_wait_ms=0, max_batch_size=1))
    with running(app) as url, ThreadPoolExecutor(2) as clients:
        first = clients.submit(predict, url, "lora", ["a"])  # in the model, held
        wait_for_queue_depth(url, 1, first)
        second = clients.submit(predict, url, "lora", ["b"])  # waits in the queue behind it
        wait_for_queue_depth(url, 2, second)
        app.state.stopping()
        r = second.result(timeout=10)
        assert r.status_code == 503 and r.headers["retry-after"] == "1" and "the server is stopping" in r.text, r.text
        assert not first.done(), "the batch in the model finishes"
        pool.release.set()
        assert first.result(timeout=10).status_code == 200
    held.close()
