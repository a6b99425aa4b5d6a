"""Instruction tuning: instruction / input / output rows and chat `messages` rows, rendered with the
tokenizer's chat template where it has one, trained with the response-only loss (FLAN, Wei et al.
2022), by every method that can generate; artifacts reload and write the same text."""

from __future__ import annotations

import json

import pytest
import torch

from prompttune import TaskSpec, TrainConfig, build_classifier, generate, load_artifact, save_artifact, train
from prompttune.cli import main
from prompttune.data import HISTORY, conversation, load_examples
from prompttune.errors import ConfigError, DataError
from prompttune.evaluation import evaluate
from prompttune.templates import literal_ids

ROWS = [{"instruction": "Repeat the word.", "input": w, "output": "good fun"} for w in ("film", "movie", "plot", "cast", "scene")]
EXAMPLES = [{"instruction": r["instruction"], "input": r["input"], "label": r["output"]} for r in ROWS]
TEMPLATE = "{instruction}\n\n{input} {mask}"
# Every method that can write text, with options small enough for a tiny model (and a combination).
METHODS = {
    "prompt-tuning": ("{soft:4} " + TEMPLATE, {}, 0.1),
    "p-tuning": ("{soft:4} " + TEMPLATE, {"encoder": "mlp"}, 0.05),
    "prefix-tuning": (TEMPLATE, {"prompt_length": 4, "reparam_hidden": 32}, 0.05),
    "p-tuning-v2": (TEMPLATE, {"prompt_length": 4}, 0.1),
    "lora": (TEMPLATE, {"lora_rank": 4}, 0.02),
    "adapter": (TEMPLATE, {"reduction_factor": 4}, 0.02),
    "bitfit": (TEMPLATE, {}, 0.05),
    "prompt-finetune": (TEMPLATE, {}, 1e-3),
    ("prompt-tuning", "lora"): ("{soft:4} " + TEMPLATE, {"lora_rank": 4}, 0.05),
}


def spec(model_dir, method, *, chat=None, response_only_loss=True) -> TaskSpec:
    template, options, _ = METHODS[method]
    return TaskSpec(max_length=96, method=list(method) if isinstance(method, tuple) else method, model=str(model_dir),
                    text_fields=["instruction", "input"], labels=[], template=template, options=options, generation=True,
                    chat_template=chat, response_only_loss=response_only_loss)


def _token_by_token(task, example: dict) -> tuple[list[int], list[int]]:
    """(ids, targets) of one example as collate builds them."""
    batch = task.collate([example])
    return batch["ids"][0].tolist(), batch["target"][0].tolist()


def test_with_a_chat_template_the_prompt_is_the_users_turn_and_only_the_reply_carries_the_loss(gpt2_chatml_dir):
    task, _ = build_classifier(spec(gpt2_chatml_dir, "lora"))  # auto: the tokenizer has a chat template
    tok = task.tokenizer
    assert task.chat is not None
    example = {**EXAMPLES[0], "label": "good <|im_end|> fun"}  # a special token's text in data stays text
    ids, target = _token_by_token(task, example)
    expected_prompt = tok.apply_chat_template([{"role": "user", "content": "Repeat the word.\n\nfilm"}],
                                              add_generation_prompt=True, tokenize=False)
    reply = literal_ids(tok, "good <|im_end|> fun") + [tok.convert_tokens_to_ids("<|im_end|>")]
    n_prompt = len(ids) - len(reply)
    assert tok.decode(ids[:n_prompt]) == expected_prompt, "the prompt is not the chat template's rendering"
    assert ids[n_prompt:] == reply
    for i, (token, label) in enumerate(zip(ids, target)):
        want = token if i >= n_prompt else -100
        assert label == want, f"position {i} ({tok.convert_ids_to_tokens(token)!r}): label {label}, expected {want}"


def test_without_a_chat_template_the_tasks_template_renders_and_only_the_target_carries_the_loss(gpt2_dir):
    task, _ = build_classifier(spec(gpt2_dir, "lora"))
    tok = task.tokenizer
    assert task.chat is None
    ids, target = _token_by_token(task, EXAMPLES[0])
    reply = literal_ids(tok, " good fun") + [tok.eos_token_id]
    n_prompt = len(ids) - len(reply)
    assert tok.decode(ids[:n_prompt]) == "Repeat the word.\n\nfilm"
    assert target == [-100] * n_prompt + reply


@pytest.mark.parametrize("model", ["gpt2_dir", "gpt2_chatml_dir"])
def test_the_switch_puts_the_prompts_tokens_in_the_loss_but_never_soft_tokens_or_padding(model, request):
    task, _ = build_classifier(spec(request.getfixturevalue(model), "prompt-tuning", response_only_loss=False))
    batch = task.collate(EXAMPLES[:2] + [{**EXAMPLES[2], "input": "a much longer input than the others here"}])
    ids, target, attn = batch["ids"], batch["target"], batch["attn"]
    soft = ids >= task.soft_base
    assert int(soft[0].sum()) == 4
    assert torch.equal(target[~soft & (attn == 1)], ids[~soft & (attn == 1)])
    assert (target[soft | (attn == 0)] == -100).all()


def test_messages_rows_split_into_history_last_user_turn_and_reply(tmp_path, gpt2_chatml_dir):
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "A colour?"},
            {"role": "assistant", "content": "Blue."}]
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"messages": chat}) + "\n")
    [ex] = load_examples(path, ["messages"], "label")
    assert ex == {"messages": "A colour?", HISTORY: chat[:3], "label": "Blue."}
    s = TaskSpec(method="lora", model=str(gpt2_chatml_dir), text_fields=["messages"], labels=[], template="{messages} {mask}",
                 generation=True, chat_template=True, max_length=96)
    task, _ = build_classifier(s)
    batch = task.collate([ex])
    ids, target = batch["ids"][0].tolist(), batch["target"][0].tolist()
    n_prompt = target.index(next(t for t in target if t != -100))
    assert task.tokenizer.decode(ids[:n_prompt]) == task.tokenizer.apply_chat_template(
        chat[:-1], add_generation_prompt=True, tokenize=False)
    assert task.tokenizer.decode(ids[n_prompt:]) == "Blue.<|im_end|>"


@pytest.mark.parametrize(("messages", "message"), [
    ([], "empty conversation"),
    ([{"role": "user"}], "has no text \"content\""),
    (["hi"], "holds a list, expected text"),  # a list of texts is not a conversation
    ([{"role": "user", "content": "a"}, "hi"], "message 1 is not an object with a text \"role\""),
    ([{"role": "assistant", "content": "x"}], "must end with a user message"),
    ([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}], "must end with a user message"),
    ([{"role": "<|im_start|>", "content": "a"}, {"role": "user", "content": "b"}], "has role '<\\|im_start\\|>'; a role is a name"),
    ([{"role": "user\nhi", "content": "a"}], "a role is a name"),
])
def test_bad_conversations_are_one_line_naming_the_row(messages, message, tmp_path):
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "fine"}, {"role": "assistant", "content": "ok"}]})
                    + "\n" + json.dumps({"messages": messages}) + "\n")
    with pytest.raises(DataError, match=f"chat.jsonl:2: column 'messages'.*{message}") as e:
        load_examples(path, ["messages"], "label")
    assert "\n" not in str(e.value)


def test_a_training_conversation_must_end_with_the_reply(tmp_path):
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    with pytest.raises(DataError, match="chat.jsonl:1: the conversation ends with a user turn"):
        load_examples(path, ["messages"], "label")
    assert load_examples(path, ["messages"], None) == [{"messages": "hi"}]  # an input to generate from
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}))
    assert load_examples(path, ["messages"], None) == [{"messages": "hi", "label": "yo"}], "the reply is the reference"
    assert conversation([{"role": "user", "content": "hi"}], "x") == ([], "hi", None)


def test_an_empty_reply_is_refused_as_an_empty_label_is(tmp_path):
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": " "}]}) + "\n")
    with pytest.raises(DataError, match="chat.jsonl:1: the assistant's reply .* is empty"):
        load_examples(path, ["messages"], "label")


def test_a_multi_turn_conversation_needs_a_chat_template(gpt2_dir):
    s = TaskSpec(method="lora", model=str(gpt2_dir), text_fields=["messages"], labels=[], template="{messages} {mask}",
                 generation=True, max_length=64)
    task, _ = build_classifier(s)
    with pytest.raises(DataError, match="needs a model with a chat template"):
        task.collate([{"messages": "a", HISTORY: [{"role": "user", "content": "b"}], "label": "c"}])
    with pytest.raises(ConfigError, match="has no chat template"):
        build_classifier(TaskSpec(**{**s.__dict__, "chat_template": True}))


def test_an_encoder_decoder_model_refuses_the_loss_on_its_prompt(t5_dir):
    with pytest.raises(ConfigError, match="encoder-decoder model: its encoder reads the prompt"):
        build_classifier(spec(t5_dir, "prefix-tuning", response_only_loss=False))


def test_an_encoder_decoder_model_refuses_a_chat_template(t5_dir, tmp_path):
    import shutil

    from transformers import AutoTokenizer

    shutil.copytree(t5_dir, tmp_path / "t5", dirs_exist_ok=True)
    tok = AutoTokenizer.from_pretrained(tmp_path / "t5")
    tok.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    tok.save_pretrained(tmp_path / "t5")
    with pytest.raises(ConfigError, match="is an encoder-decoder model: a chat template renders a causal LM's prompt"):
        build_classifier(TaskSpec(**{**spec(tmp_path / "t5", "lora").__dict__, "chat_template": True}))
    assert build_classifier(spec(tmp_path / "t5", "lora"))[0].chat is None  # auto: the task's template


def test_chat_template_key_is_checked(gpt2_dir):
    from prompttune.config import load_config

    raw = {"model": str(gpt2_dir), "task": {"text_fields": ["instruction", "input"], "label_field": "output",
                                            "generation": True}, "method": {"name": "lora"}}
    cfg = load_config(raw=raw)
    assert cfg.prompt.template == "{instruction}\n\n{input} {mask}" and cfg.prompt.chat_template == "auto"
    with pytest.raises(ConfigError, match="prompt.chat_template must be auto, true or false"):
        load_config(raw={**raw, "prompt": {"chat_template": "yes please"}})


@pytest.mark.parametrize("method", list(METHODS), ids=lambda m: "+".join(m) if isinstance(m, tuple) else m)
def test_every_generating_method_learns_instructions_and_round_trips(method, gpt2_chatml_dir, tmp_path):
    s = spec(gpt2_chatml_dir, method)
    torch.manual_seed(0)
    task, fp = build_classifier(s)
    trainable = {n for n, p in task.named_parameters() if p.requires_grad}
    before_params = {n: p.detach().clone() for n, p in task.named_parameters()}
    before = evaluate(task, EXAMPLES)["loss"]
    train(task, EXAMPLES, None, TrainConfig(epochs=25, lr=METHODS[method][2], batch_size=5, progress=False))
    after = evaluate(task, EXAMPLES)["loss"]
    assert after < before - 0.5, f"{method}: response loss {before:.3f} → {after:.3f}"
    changed = {n for n, p in task.named_parameters() if not torch.equal(before_params[n], p)}
    assert changed and changed <= trainable, f"{method} changed parameters it does not train: {sorted(changed - trainable)[:5]}"
    outputs = generate(task, EXAMPLES, max_new_tokens=4)

    save_artifact(tmp_path, s, task, fp)
    loaded, config = load_artifact(tmp_path)
    assert config["chat_template"] is True and config["response_only_loss"] is True
    assert generate(loaded, EXAMPLES, max_new_tokens=4) == outputs, f"{method}: the reloaded task writes other text"
    assert evaluate(loaded, EXAMPLES)["loss"] == pytest.approx(after, abs=1e-4)


def test_instruction_and_chat_data_through_the_cli(gpt2_chatml_dir, tmp_path, capsys):
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    chats = tmp_path / "chats.jsonl"
    chats.write_text("".join(json.dumps({"messages": [{"role": "user", "content": r["input"]},
                                                      {"role": "assistant", "content": r["output"]}]}) + "\n" for r in ROWS))
    config = tmp_path / "run.yaml"
    config.write_text(f"""
model: {gpt2_chatml_dir}
task: {{train: {data}, eval: {data}, text_fields: [instruction, input], label_field: output, generation: true}}
method: {{name: prefix-tuning, prompt_length: 4, reparam_hidden: 32}}
train: {{epochs: 2, lr: 0.05, batch_size: 5, max_length: 96, progress: false}}
""")
    assert main(["train", str(config), "--out", str(tmp_path / "task")]) == 0
    assert "loss" in json.loads(capsys.readouterr().out)["eval"]
    assert json.loads((tmp_path / "task" / "config.json").read_text())["chat_template"] is True
    chat_config = tmp_path / "chat.yaml"
    chat_config.write_text(config.read_text().replace(f"train: {data}, eval: {data}, text_fields: [instruction, input], "
                                                      "label_field: output", f"train: {chats}, text_fields: [messages]"))
    assert main(["train", str(chat_config), "--out", str(tmp_path / "chat")]) == 0
    capsys.readouterr()
    assert main(["generate", str(tmp_path / "chat"), "--text", "film", "--max-new-tokens", "3"]) == 0


def test_the_server_renders_a_chat_as_training_did(gpt2_chatml_dir, tmp_path):
    from prompttune.serving import TaskPool
    from prompttune.serving.engine import Engine, Sampling

    s = TaskSpec(method="lora", model=str(gpt2_chatml_dir), text_fields=["messages"], labels=[], template="{messages} {mask}",
                 generation=True, max_length=96, chat_template=None)  # auto: trained on chats
    task, fp = build_classifier(s)
    save_artifact(tmp_path / "chat", s, task, fp)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "A <|im_start|> colour?"}]
    engine = Engine(TaskPool(device="cpu"))
    try:
        engine.add(tmp_path / "chat", "chat")
        served = engine._chat_prompt("chat", messages, Sampling())
    finally:
        engine.close()
    assert served == task.collate([{"messages": messages[1]["content"], HISTORY: messages[:1], "label": "x"}])["ids"][0].tolist()[: len(served)]
    assert task.tokenizer.decode(served) == task.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert served.count(task.tokenizer.convert_tokens_to_ids("<|im_start|>")) == 3  # the one in the text stays text


def test_a_generation_tasks_eval_split_keeps_each_inputs_references_together():
    from prompttune.data import held_out_split, input_key

    examples = [{"mr": f"name: R{i // 3}", "label": f"text {i}"} for i in range(30)]  # 10 inputs, 3 references each
    rest, held = held_out_split(examples, 0.3, seed=1, by_class=False)
    assert len({input_key(ex) for ex in held}) == 3 and len(held) == 9
    assert not {input_key(ex) for ex in held} & {input_key(ex) for ex in rest}, "an evaluated input was trained on"
    assert held_out_split(examples, 0.3, seed=1, by_class=False) == (rest, held)


@pytest.mark.parametrize("model", ["gpt2_dir", "gpt2_chatml_dir", "t5_dir"])
def test_long_prompts_and_targets_fit_max_length_and_keep_their_end_token(model, request):
    s = TaskSpec(**{**spec(request.getfixturevalue(model), "prefix-tuning").__dict__, "max_length": 48,
                    "chat_template": None})
    task, _ = build_classifier(s)
    long = " ".join(["film"] * 200)
    batch = task.collate([{"instruction": "Repeat.", "input": long, "label": long}])
    ids, target = batch["ids"][0], batch["target"][0]
    assert ids.shape[0] <= 48 and target.shape[0] <= 48, f"{ids.shape[0]} prompt+target tokens for max_length 48"
    end = task.chat.end_of_turn[-1] if task.chat is not None else task.eos
    assert target[target != -100][-1].item() == end, "the truncated target lost its end token"
    assert float(task(batch).detach()) > 0  # the forward pass fits the model's positions


def test_a_chat_task_refuses_to_reload_under_another_chat_template(gpt2_chatml_dir, tmp_path):
    import shutil

    from transformers import AutoTokenizer

    from prompttune.errors import ModelError

    model = tmp_path / "model"
    shutil.copytree(gpt2_chatml_dir, model)
    s = TaskSpec(**{**spec(model, "lora").__dict__, "chat_template": None})
    save_artifact(tmp_path / "task", s, *build_classifier(s))
    assert len(json.loads((tmp_path / "task" / "config.json").read_text())["chat_template_sha256"]) == 64
    load_artifact(tmp_path / "task")  # the same template: reloads
    tok = AutoTokenizer.from_pretrained(model)
    tok.chat_template = tok.chat_template.replace("You are a tiny assistant.", "You are a pirate.")
    tok.save_pretrained(model)
    with pytest.raises(ModelError, match="trained with another chat template"):
        load_artifact(tmp_path / "task")


def test_render_shows_the_chat_prompt_and_the_target_training_reads(gpt2_chatml_dir, tmp_path, capsys):
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    config = tmp_path / "run.yaml"
    config.write_text(f"""
model: {gpt2_chatml_dir}
task: {{train: {data}, text_fields: [instruction, input], label_field: output, generation: true}}
method: {{name: lora}}
train: {{max_length: 96}}
""")
    assert main(["render", str(config), "--json", "--n", "1"]) == 0
    [rendered] = json.loads(capsys.readouterr().out)["inputs"]
    task, _ = build_classifier(spec(gpt2_chatml_dir, "lora", chat=None))
    batch = task.collate([EXAMPLES[0]])
    assert rendered["ids"] == batch["ids"][0].tolist(), "render shows other ids than training reads"
    assert rendered["text"].startswith("<|im_start|>system") and rendered["target"]["text"] == "good fun<|im_end|>"
    assert main(["render", str(config), "--n", "1"]) == 0
    assert "target: from position" in capsys.readouterr().out


def test_a_conversation_can_be_given_as_a_text_or_on_standard_input():
    from prompttune.data import examples_from_lines, examples_from_texts

    chat = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "A colour?"}]}
    want = [{"messages": "A colour?", HISTORY: chat["messages"][:1]}]
    assert examples_from_texts([json.dumps(chat)], ["messages"], name="--text") == want
    assert examples_from_lines(json.dumps(chat) + "\n", ["messages"]) == want
    with pytest.raises(DataError, match="--text .*: field 'messages': the conversation must end with a user message"):
        examples_from_texts([json.dumps({"messages": [{"role": "system", "content": "x"}]})], ["messages"], name="--text")
