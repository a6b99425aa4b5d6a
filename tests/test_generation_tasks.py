"""Generation tasks: prompts trained with the LM loss on target text, then `generate` (prefix-tuning's
original setting, Li & Liang 2021), on a decoder-only and an encoder-decoder model."""

from __future__ import annotations

import json

import pytest
import torch

from prompttune import TaskSpec, TrainConfig, build_classifier, generate, load_artifact, save_artifact, train
from prompttune.cli import main
from prompttune.config import load_config
from prompttune.errors import ConfigError, ModelError
from prompttune.evaluation import evaluate

# One fixed output for every input: a frozen random model cannot write it until the prompt learns it.
EXAMPLES = [{"text": t, "label": "good fun"} for t in ("a film", "the movie", "it was", "this film", "a movie")]
METHODS = {"prefix-tuning": ("{text} is {mask}", {"prompt_length": 4, "reparam_hidden": 32}),
           "p-tuning-v2": ("{text} is {mask}", {"prompt_length": 4}),
           "prompt-tuning": ("{soft:4} {text} is {mask}", {})}


def spec(model_dir, method) -> TaskSpec:
    template, options = METHODS[method]
    return TaskSpec(max_length=64, method=method, model=str(model_dir), text_fields=["text"], labels=[], template=template,
                    options=options, generation=True)


@pytest.mark.parametrize("model", ["gpt2_dir", "t5_dir"])
@pytest.mark.parametrize("method", list(METHODS))
def test_a_prompt_learns_to_write_the_target_and_the_artifact_round_trips(method, model, request, tmp_path):
    s = spec(request.getfixturevalue(model), method)
    torch.manual_seed(0)
    task, fp = build_classifier(s)
    frozen = {n: p.detach().clone() for n, p in task.model.named_parameters()}
    before = evaluate(task, EXAMPLES)["loss"]
    train(task, EXAMPLES, None, TrainConfig(epochs=60, lr=0.1, batch_size=5, progress=False))
    after = evaluate(task, EXAMPLES)["loss"]
    assert after < before - 1.0, f"{method} on {model}: target loss {before:.3f} → {after:.3f}"
    assert all(torch.equal(frozen[n], p) for n, p in task.model.named_parameters()), "the frozen model changed"
    outputs = generate(task, EXAMPLES, max_new_tokens=4)
    if method != "prompt-tuning":  # 4 input vectors on a tiny random model learn slower than prefixes at every layer
        assert all(o.strip() == "good fun" for o in outputs), f"{method} on {model} wrote {outputs}"

    save_artifact(tmp_path, s, task, fp)
    loaded, config = load_artifact(tmp_path)
    assert config["generation"] is True and config["stored_numbers"] < 0.2 * config["total_parameters"]
    assert generate(loaded, EXAMPLES, max_new_tokens=4) == outputs
    assert evaluate(loaded, EXAMPLES)["loss"] == pytest.approx(after, abs=1e-5)


def test_a_masked_lm_cannot_be_a_generation_task(bert_dir):
    with pytest.raises(ModelError, match="masked LM: it fills masks but does not generate"):
        build_classifier(spec(bert_dir, "prefix-tuning"))


@pytest.mark.parametrize(("method", "extra", "message"), [
    ("p-tuning-v2", {"head": True}, "task.generation needs a template method"),
    ("prefix-tuning", {}, None),
])
def test_generation_configs_are_checked(method, extra, message, gpt2_dir):
    raw = {"model": str(gpt2_dir), "task": {"text_fields": ["text"], "generation": True},
           "prompt": {"template": "{text} is {mask}"}, "method": {"name": method, **extra}}
    if message:
        with pytest.raises(ConfigError, match=message):
            load_config(raw=raw)
    else:
        assert load_config(raw=raw).task.generation
    raw["task"]["shots"] = 4
    with pytest.raises(ConfigError, match="task.shots draws K examples per class|needs a template method"):
        load_config(raw=raw)


def test_train_eval_generate_a_text_task_through_the_cli(gpt2_dir, tmp_path, capsys):
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"text": ex["text"], "summary": ex["label"]}) + "\n" for ex in EXAMPLES))
    config = tmp_path / "run.yaml"
    config.write_text(f"""
model: {gpt2_dir}
task: {{train: {data}, eval: {data}, text_fields: [text], label_field: summary, generation: true}}
prompt: {{template: "{{text}} is {{mask}}"}}
method: {{name: prefix-tuning, prompt_length: 4, reparam_hidden: 32}}
train: {{epochs: 2, lr: 0.05, batch_size: 5, max_length: 64, progress: false}}
""")
    assert main(["train", str(config), "--out", str(tmp_path / "task")]) == 0
    out = capsys.readouterr().out
    assert "perplexity" in json.loads(out)["eval"]
    assert main(["eval", str(tmp_path / "task"), "--data", str(data), "--json"]) == 0
    assert set(json.loads(capsys.readouterr().out)) == {"loss", "perplexity", "n"}
    assert main(["generate", str(tmp_path / "task"), "--text", "a film", "--max-new-tokens", "3"]) == 0
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "task"), "--text", "a film"]) == 2
    assert "use `prompttune generate`" in capsys.readouterr().err
