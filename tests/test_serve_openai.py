"""The OpenAI-compatible endpoints of `prompttune serve`, driven by the official `openai` client against
the live server: a tiny GPT-2 (given a simple chat template here) with a generation task trained to
write "good fun", and a classification task on the same model.

Completions and chats give what `generate` gives the task directly; usage counts tokens; stop
strings, max_tokens and sampling work; errors come back as the client's typed exceptions.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import openai
import pytest
import torch
from transformers import AutoTokenizer

from live_server import running
from prompttune import TaskSpec, TrainConfig, build_classifier, generate, load_artifact, save_artifact, train
from prompttune.errors import ModelError
from prompttune.generation import chat_prompt_ids, generate_ids, prompt_ids
from prompttune.serving import TaskPool
from prompttune.serving.engine import Engine
from prompttune.serving.limits import Limits
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
    chat = tok.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
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
    r = httpx.post(f"{url}/v1/completions", json={"model": "writer", "prompt": "a film", "user": "u1", "max_tokens": 2,
                                                   "temperature": 0, "presence_penalty": 0}, timeout=30)
    assert r.status_code == 200, r.text  # fields of no consequence are accepted
    r = httpx.post(f"{url}/v1/tasks/writer/predict", json={"texts": ["a film"]}, timeout=30)
    assert r.status_code == 400 and "generates text: use POST /v1/completions" in r.json()["detail"]


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
