"""The OpenAI-compatible endpoints of `prompttune serve`, driven by the official `openai` client against
the live server: a tiny GPT-2 (given a simple chat template here) with a generation task trained to
write "good fun", and a classification task on the same model.

Completions and chats give what `generate` gives the task directly; usage counts tokens; stop
strings, max_tokens and sampling work; errors come back as the client's typed exceptions.
"""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
import torch
from transformers import AutoTokenizer, StoppingCriteriaList

from live_server import running
from prompttune import TaskSpec, TrainConfig, build_classifier, generate, load_artifact, save_artifact, train
from prompttune.chat import ChatFormat
from prompttune.errors import ModelError
from prompttune.generation import chat_prompt_ids, generate_ids, prompt_ids
from prompttune.serving import TaskPool
from prompttune.serving.engine import GENERATION_CHUNK, Engine, WhenSet
from prompttune.serving.limits import Limits
from prompttune.templates import literal_ids
from prompttune.serving.server import build_app

CHAT_TEMPLATE = ("{% for m in messages %}<|endoftext|>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|endoftext|>assistant:{% endif %}")
EXAMPLES = [{"text": t, "label": "good fun"} for t in ("a film", "the movie", "it was", "this film", "a movie")]
CHAT = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "a film"}]


@pytest.fixture(scope="module")
def gpt2_chat_dir(tmp_path_factory, gpt2_dir) -> Path:
    """The tiny GPT-2 with a chat template in its tokenizer."""
    directory = tmp_path_factory.mktemp("gpt2_chat")
    shutil.copytree(gpt2_dir, directory, dirs_exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def tasks(tmp_path_factory, gpt2_chat_dir) -> Path:
    """writer: prefix-tuning trained to write "good fun" after any text; judge: a zero-shot classifier."""
    root = tmp_path_factory.mktemp("openai_tasks")
    spec = TaskSpec(max_length=64, method="prefix-tuning", model=str(gpt2_chat_dir), text_fields=["text"], labels=[],
                    template="{text} is {mask}", options={"prompt_length": 4, "reparam_hidden": 32}, generation=True)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        task, fp = build_classifier(spec)
        train(task, EXAMPLES, None, TrainConfig(epochs=60, lr=0.1, batch_size=5, progress=False))
    save_artifact(root / "writer", spec, task, fp)
    spec = TaskSpec(max_length=64, method="zero-shot", model=str(gpt2_chat_dir), text_fields=["text"], labels=["0", "1"],
                    template="{text} it was {mask}", verbalizer={"0": ["bad"], "1": ["good"]})
    save_artifact(root / "judge", spec, *build_classifier(spec))
    return root


@pytest.fixture(scope="module")
def engine(tasks):
    engine = Engine(TaskPool(device="cpu"))
    engine.add(tasks / "writer", "writer")
    engine.add(tasks / "judge", "judge")
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def url(engine):
    with running(build_app(engine, limits=Limits(max_new_tokens=64))) as url:
        yield url


@pytest.fixture(scope="module")
def client(url) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="not-needed", max_retries=0, timeout=30)


@pytest.fixture(scope="module")
def writer(tasks):
    """The generation task loaded on its own, to compare the server with."""
    return load_artifact(tasks / "writer")[0]


def test_the_openai_client_completes_like_generate(client, writer):
    done = client.completions.create(model="writer", prompt="a film", max_tokens=4, temperature=0)
    assert done.object == "text_completion" and done.model == "writer" and len(done.choices) == 1
    direct = generate(writer, [{"text": "a film"}], max_new_tokens=4)[0]
    assert done.choices[0].text == direct and direct.strip() == "good fun"
    assert done.choices[0].finish_reason == "stop"  # the task ends its text before 4 tokens
    new = generate_ids(writer, [prompt_ids(writer, {"text": "a film"})], max_new_tokens=4)[0]
    assert done.usage.prompt_tokens == len(prompt_ids(writer, {"text": "a film"}))
    assert done.usage.completion_tokens == len(new) == 2
    assert done.usage.total_tokens == done.usage.prompt_tokens + done.usage.completion_tokens


def test_a_list_of_prompts_gets_one_choice_each_in_order(client, writer):
    prompts = ["the movie", "it was", "a movie"]
    done = client.completions.create(model="writer", prompt=prompts, max_tokens=4, temperature=0)
    assert [c.index for c in done.choices] == [0, 1, 2]
    assert [c.text for c in done.choices] == generate(writer, [{"text": p} for p in prompts], max_new_tokens=4)


def test_stop_strings_and_max_tokens_end_the_text(client):
    done = client.completions.create(model="writer", prompt="a film", max_tokens=8, temperature=0, stop=[" fun", "zzz"])
    assert done.choices[0].text == " good" and done.choices[0].finish_reason == "stop"
    done = client.completions.create(model="writer", prompt="a film", max_tokens=1, temperature=0)
    assert done.choices[0].text == " good" and done.choices[0].finish_reason == "length"
    assert done.usage.completion_tokens == 1


def test_sampling_with_a_temperature(client):
    done = client.completions.create(model="writer", prompt="a film", max_tokens=5, temperature=1.5, top_p=0.9)
    assert isinstance(done.choices[0].text, str) and 1 <= done.usage.completion_tokens <= 5


def test_the_openai_client_chats_through_the_chat_template(client, writer):
    done = client.chat.completions.create(model="writer", messages=CHAT, max_tokens=6, temperature=0)
    assert done.object == "chat.completion" and done.choices[0].message.role == "assistant"
    tok = writer.tokenizer
    chat = ChatFormat.of(tok).prompt_ids(CHAT[:1], literal_ids(tok, "a film"))  # contents read literally
    assert tok.decode(chat) == tok.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
    ids = chat_prompt_ids(writer, "text", chat)
    assert ids.count(tok.eos_token_id) == 3  # the template's <|endoftext|> markers stay special tokens
    new = generate_ids(writer, [ids], max_new_tokens=6)[0]
    assert done.choices[0].message.content == tok.decode(new, skip_special_tokens=True)
    assert done.usage.prompt_tokens == len(ids) and done.usage.completion_tokens == len(new)
    done = client.chat.completions.create(model="writer", messages=CHAT, max_completion_tokens=1, temperature=0)
    assert done.choices[0].finish_reason == "length" and done.usage.completion_tokens == 1


def test_the_models_are_the_tasks(client):
    assert {m.id for m in client.models.list()} == {"writer"}, "a classification task is no model to complete with"


def test_errors_reach_the_client_as_its_exceptions(client, url):
    with pytest.raises(openai.NotFoundError, match="the model 'nobody' does not exist"):
        client.completions.create(model="nobody", prompt="a film")
    with pytest.raises(openai.BadRequestError, match="task 'judge' classifies text: use POST /v1/tasks/judge/predict"):
        client.completions.create(model="judge", prompt="a film")
    with pytest.raises(openai.UnprocessableEntityError, match="max_tokens: Input should be less than or equal to 64"):
        client.completions.create(model="writer", prompt="a film", max_tokens=65)
    with pytest.raises(openai.UnprocessableEntityError, match="n: Input should be 1"):
        client.completions.create(model="writer", prompt="a film", n=2)
    with pytest.raises(openai.UnprocessableEntityError, match="prompt: String should have at least 1 character"):
        client.completions.create(model="writer", prompt="")
    with pytest.raises(openai.UnprocessableEntityError, match=r"prompt\[1\] '  ' has no text"):
        client.completions.create(model="writer", prompt=["a film", "  "])
    with pytest.raises(openai.BadRequestError, match="more than the 124 positions the model has for this task"):
        client.completions.create(model="writer", prompt="a film " * 60, max_tokens=64)
    with pytest.raises(openai.UnprocessableEntityError, match="messages.0.role|messages\\[0\\].role"):
        client.chat.completions.create(model="writer", messages=[{"role": "robot", "content": "hi"}])
    for unoffered in ({"stream": True}, {"logprobs": 2}, {"echo": True}, {"presence_penalty": 0.5}):
        r = httpx.post(f"{url}/v1/completions", json={"model": "writer", "prompt": "a film", **unoffered}, timeout=30)
        assert r.status_code == 422 and r.json()["error"]["param"] == next(iter(unoffered)), r.text
    for changes_the_text in ({"logit_bias": {"50": 10}}, {"max_tokens": "4"}, {"temperature": "0.5"}):
        r = httpx.post(f"{url}/v1/completions", json={"model": "writer", "prompt": "a film", **changes_the_text}, timeout=30)
        assert r.status_code == 422 and r.json()["error"]["param"] == next(iter(changes_the_text)), r.text
    r = httpx.post(f"{url}/v1/chat/completions", json={"model": "writer", "messages": CHAT,
                                                        "response_format": {"type": "json_object"}}, timeout=30)
    assert r.status_code == 422 and r.json()["error"]["param"] == "response_format", r.text
    r = httpx.post(f"{url}/v1/completions", json={"model": "writer", "prompt": "a film", "user": "u1", "max_tokens": 2,
                                                   "temperature": 0, "presence_penalty": 0}, timeout=30)
    assert r.status_code == 200, r.text  # fields of no consequence are accepted
    r = httpx.post(f"{url}/v1/tasks/writer/predict", json={"texts": ["a film"]}, timeout=30)
    assert r.status_code == 400 and "generates text: use POST /v1/completions" in r.json()["detail"]


def test_a_chat_ends_with_a_user_message_that_has_text(client):
    with pytest.raises(openai.BadRequestError, match="the conversation ends with an assistant message"):
        client.chat.completions.create(model="writer", messages=[*CHAT, {"role": "assistant", "content": "good"}])
    with pytest.raises(openai.UnprocessableEntityError, match=r"messages\[1\].content '  ' has no text"):
        client.chat.completions.create(model="writer", messages=[CHAT[0], {"role": "user", "content": "  "}])


def test_a_chat_needs_a_chat_template(client, writer, engine, monkeypatch):
    monkeypatch.setattr(engine.task("writer").classifier.tokenizer, "chat_template", None)
    with pytest.raises(openai.BadRequestError, match="its tokenizer has no chat template; use /v1/completions"):
        client.chat.completions.create(model="writer", messages=CHAT)


def test_a_chat_takes_the_place_of_the_text_field(gpt2_chat_dir):
    spec = TaskSpec(max_length=64, method="prompt-tuning", model=str(gpt2_chat_dir), text_fields=["text"], labels=[],
                    template="{soft:2} {text} is {mask}", generation=True)
    task, _ = build_classifier(spec)
    soft, word = prompt_ids(task, {"text": "a"})[:2], prompt_ids(task, {"text": "a"})[-1]
    assert chat_prompt_ids(task, "text", [7, 8, 9]) == [*soft, 7, 8, 9, word]  # soft tokens and " is" stay
    spec = TaskSpec(max_length=64, method="zero-shot", model=str(gpt2_chat_dir), text_fields=["text"], labels=[],
                    template="Answer: {mask} {text}", generation=True)
    with pytest.raises(ModelError, match=r"has no \{text\} before \{mask\}: a chat has no place in its prompt"):
        chat_prompt_ids(build_classifier(spec)[0], "text", [7, 8, 9])


def test_a_seed_samples_the_same_text(client):
    runs = [client.completions.create(model="writer", prompt=["a film", "it was"], max_tokens=6, temperature=2.0, seed=7)
            for _ in range(2)]
    assert [c.text for c in runs[0].choices] == [c.text for c in runs[1].choices]


class CountedGeneration:
    """Wraps a pool's `generate_ids`: counts the chunks run; each waits `delay` s (a slow model)."""

    def __init__(self, pool, delay: float):
        self.pool, self.generate_ids, self.delay = pool, pool.generate_ids, delay
        self.chunks, self.started = 0, threading.Event()

    def __call__(self, *args, **kwargs):
        self.chunks += 1
        self.started.set()
        time.sleep(self.delay)
        return self.generate_ids(*args, **kwargs)


def test_predictions_run_between_the_chunks_of_a_long_generation(engine, url, monkeypatch):
    counted = CountedGeneration(engine.pool, delay=0.3)
    monkeypatch.setattr(engine.pool, "generate_ids", counted)
    prompts = [f"film {i}" for i in range(8 * GENERATION_CHUNK)]
    with ThreadPoolExecutor(1) as clients:
        long = clients.submit(httpx.post, f"{url}/v1/completions", json={"model": "writer", "prompt": prompts,
                                                                          "max_tokens": 2, "temperature": 0}, timeout=60)
        assert counted.started.wait(10)
        r = httpx.post(f"{url}/v1/tasks/judge/predict", json={"texts": ["a film"]}, timeout=30)
        assert r.status_code == 200
        assert not long.done() and counted.chunks < 8, "the prediction waited for the whole generation"
        done = long.result(timeout=60)
    assert done.status_code == 200 and len(done.json()["choices"]) == len(prompts) and counted.chunks == 8


def test_a_client_that_goes_away_cancels_its_generation(engine, url, monkeypatch):
    counted = CountedGeneration(engine.pool, delay=0.5)
    monkeypatch.setattr(engine.pool, "generate_ids", counted)
    prompts = [f"film {i}" for i in range(8 * GENERATION_CHUNK)]
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{url}/v1/completions", json={"model": "writer", "prompt": prompts, "max_tokens": 2, "temperature": 0},
                   timeout=httpx.Timeout(30, read=0.2))
    time.sleep(8 * 0.5 + 1)  # the whole request's time, had it gone on
    assert counted.chunks <= 2, f"{counted.chunks} of 8 chunks ran after the client went away"
    r = httpx.post(f"{url}/v1/tasks/judge/predict", json={"texts": ["a film"]}, timeout=30)
    assert r.status_code == 200
    assert httpx.get(f"{url}/metrics", timeout=30).text.count("prompttune_queue_depth 0.0") == 1


def test_a_running_generation_stops_within_a_token_when_cancelled(engine):
    from prompttune.serving.engine import Cancelled, Sampling

    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        asyncio.run(engine.generate("writer", [[50, 51]], Sampling(max_tokens=8), cancel))
    task = engine.task("writer").classifier
    prompt = prompt_ids(task, {"text": "a film"})
    stopped = engine.pool.generate_ids("writer", [prompt], max_new_tokens=8, stopping_criteria=StoppingCriteriaList([WhenSet(cancel)]))
    assert len(stopped[0]) <= 1, "a set cancel event ends the generation after the token in progress"


def test_a_stopping_server_ends_its_generations_503(engine, monkeypatch):
    import prompttune.serving.server as server

    monkeypatch.setattr(server, "GRACEFUL_SHUTDOWN_S", server.DRAIN_MARGIN_S + 0.3)
    counted = CountedGeneration(engine.pool, delay=0.5)
    monkeypatch.setattr(engine.pool, "generate_ids", counted)
    app = build_app(engine, limits=Limits(max_new_tokens=64))
    prompts = [f"film {i}" for i in range(8 * GENERATION_CHUNK)]
    with running(app) as url, ThreadPoolExecutor(1) as clients:
        long = clients.submit(httpx.post, f"{url}/v1/completions", json={"model": "writer", "prompt": prompts,
                                                                          "max_tokens": 2, "temperature": 0}, timeout=60)
        assert counted.started.wait(10)
        app.state.stopping()
        r = long.result(timeout=30)
    assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
    assert r.json()["error"]["message"] == "the server is stopping; retry later"
    assert counted.chunks < 8
