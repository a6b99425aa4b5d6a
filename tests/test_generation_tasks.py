"""Generation tasks: prompts trained with the LM loss on target text, then `generate` (prefix-tuning's
original setting, Li & Liang 2021), on a decoder-only and an encoder-decoder model; decoding settings
(greedy, beams, stop strings), and `eval` scoring the generated text against every reference of an input."""

from __future__ import annotations

import io
import json
import sys

import pytest
import torch

from prompttune import (Decoding, TaskSpec, TrainConfig, build_classifier, generate, generation, load_artifact,
                        save_artifact, train)
from prompttune.artifacts import read_config
from prompttune.cli import main
from prompttune.config import load_config
from prompttune.errors import ConfigError, ModelError
from prompttune.evaluation import evaluate, generated_text_scores
from prompttune.generation import cut_at_stop, generate_ids, prompt_ids
from prompttune.text_metrics import generation_metrics

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
    outputs = generate(task, EXAMPLES, decoding=Decoding(max_new_tokens=4))
    if method != "prompt-tuning":  # 4 input vectors on a tiny random model learn slower than prefixes at every layer
        assert all(o.strip() == "good fun" for o in outputs), f"{method} on {model} wrote {outputs}"
        # Beam search scores whole texts (mean log-probability): it may go on past the target, never elsewhere.
        beams = generate(task, EXAMPLES, decoding=Decoding(max_new_tokens=4, num_beams=3))
        assert all(b.strip().startswith("good fun") for b in beams), f"beams with {method} on {model} wrote {beams}"

    save_artifact(tmp_path, s, task, fp)
    loaded, config = load_artifact(tmp_path)
    assert config["generation"] is True and config["stored_numbers"] < 0.2 * config["total_parameters"]
    assert generate(loaded, EXAMPLES, decoding=Decoding(max_new_tokens=4)) == outputs
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
    assert set(json.loads(capsys.readouterr().out)) == {"bleu", "chrf", "rouge_l", "exact_match", "loss", "perplexity", "n",
                                                         "inputs", "references", "bleu_signature", "decoding", "samples"}
    assert main(["generate", str(tmp_path / "task"), "--text", "a film", "--max-new-tokens", "3"]) == 0
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "task"), "--text", "a film"]) == 2
    assert "use `prompttune generate`" in capsys.readouterr().err


# --- decoding: greedy, beams, stop strings --------------------------------------------------

INPUTS = [{"text": t} for t in ("a film", "the movie was long and dull", "it")]  # lengths out of order


@pytest.mark.parametrize("model", ["gpt2_dir", "t5_dir"])
@pytest.mark.parametrize("method", list(METHODS))
def test_beam_search_with_a_prompt_in_place_is_the_same_batched_or_alone(method, model, request, monkeypatch):
    """`generate` expands the batch by the beams; soft tokens and per-layer prefixes bind for every row."""
    torch.manual_seed(0)
    task, _ = build_classifier(spec(request.getfixturevalue(model), method))
    decoding = Decoding(max_new_tokens=5, num_beams=3)
    batched = generate(task, INPUTS, decoding=decoding, batch_size=3)
    assert batched == [generate(task, [ex], decoding=decoding)[0] for ex in INPUTS], "batched by length, in order"
    asked = []
    real = task.model.generate
    monkeypatch.setattr(task.model, "generate", lambda **kwargs: asked.append(kwargs) or real(**kwargs))
    generate(task, INPUTS[:1], decoding=decoding)
    assert asked[0]["num_beams"] == 3 and asked[0]["max_new_tokens"] == 5 and asked[0]["do_sample"] is False


@pytest.mark.parametrize("num_beams", [1, 2])
def test_the_text_is_cut_before_the_first_stop_string_and_generation_ends_there(num_beams, gpt2_dir):
    torch.manual_seed(0)
    task, _ = build_classifier(spec(gpt2_dir, "p-tuning-v2"))
    free = generate(task, INPUTS, decoding=Decoding(max_new_tokens=8, num_beams=num_beams))
    stop = free[0][1:3]  # found early in the first text
    assert len(free[0]) > 3 and stop.strip(), free
    stopped = generate(task, INPUTS, decoding=Decoding(max_new_tokens=8, num_beams=num_beams, stop=[stop]))
    if num_beams == 1:  # greedy: the same text, up to the stop string
        assert stopped == [cut_at_stop(text, [stop])[0] for text in free]
    assert all(stop not in text for text in stopped)
    prompts = [prompt_ids(task, ex) for ex in INPUTS[:1]]
    ids = generate_ids(task, prompts, max_new_tokens=8, num_beams=num_beams, stop=[stop])
    assert len(ids[0]) < 8, "generation ended at the stop string"


def test_cut_at_stop_takes_the_stop_string_found_first_in_the_text():
    assert cut_at_stop("Aromi serves food.\nName: Cocum", ["\n", "."]) == ("Aromi serves food", True)
    assert cut_at_stop("Aromi serves food", ["\n"]) == ("Aromi serves food", False)
    assert cut_at_stop("\nAromi", ["\n"]) == ("", True)


def test_the_tasks_extra_end_ids_end_generation(gpt2_dir, monkeypatch):
    """A task's `stop_ids` (a chat template's end of turn) go to `generate` with the end-of-sequence id, and end a text."""
    torch.manual_seed(0)
    task, _ = build_classifier(spec(gpt2_dir, "prefix-tuning"))
    prompts = [prompt_ids(task, ex) for ex in INPUTS]
    free = generate_ids(task, prompts, max_new_tokens=6)
    task.stop_ids = (free[0][2],)
    asked = []
    real = task.model.generate
    monkeypatch.setattr(task.model, "generate", lambda **kwargs: asked.append(kwargs) or real(**kwargs))
    ended = generate_ids(task, prompts, max_new_tokens=6)
    assert asked[0]["eos_token_id"] == [task.tokenizer.eos_token_id, free[0][2]]
    assert ended[0] == free[0][: free[0].index(free[0][2])]


@pytest.mark.parametrize(("settings", "message"), [
    ({"max_new_tokens": 0}, "decoding.max_new_tokens must be a whole number ≥ 1, got 0"),
    ({"num_beams": True}, "decoding.num_beams must be a whole number ≥ 1, got True"),
    ({"stop": ["\n", ""]}, "decoding.stop must be a list of non-empty strings"),
    ({"stop": "\n"}, "decoding.stop must be a list of non-empty strings"),
    ({"stop": list("abcde")}, "decoding.stop holds 5 strings; at most 4"),
    ({"beams": 2}, "unknown decoding key\\(s\\) \\['beams'\\]"),
])
def test_bad_decoding_settings_are_refused_naming_the_key(settings, message):
    with pytest.raises(ConfigError, match=message):
        Decoding.from_dict(settings)


def test_decoding_stores_only_what_differs_from_the_defaults():
    assert Decoding().to_dict() == {}
    assert Decoding.from_dict({"num_beams": 4, "stop": ["\n"]}).to_dict() == {"num_beams": 4, "stop": ["\n"]}


# --- eval: the generated text scored against every reference of an input ----------------------


def test_examples_with_equal_inputs_are_generated_once_and_scored_against_all_their_references(monkeypatch):
    history = [{"role": "user", "content": "hi"}]
    examples = [
        {"mr": "name[Aromi]", "history": history, "label": "Aromi is a pub."},
        {"mr": "name[Cocum]", "label": "Cocum is a coffee shop."},
        {"history": [{"content": "hi", "role": "user"}], "mr": "name[Aromi]", "label": "The Aromi pub."},  # the first input
        {"mr": "name[Aromi]", "label": "A pub: Aromi."},  # no history: another input
    ]
    texts = [" Aromi is a pub.", "Cocum.", "Aromi"]
    asked = []

    def generated(task, inputs, *, decoding, batch_size, progress):
        asked.append((inputs, decoding))
        return texts

    monkeypatch.setattr(generation, "generate", generated)
    result = generated_text_scores(object(), examples, decoding=Decoding(num_beams=2))
    inputs = [{"mr": "name[Aromi]", "history": history}, {"mr": "name[Cocum]"}, {"mr": "name[Aromi]"}]
    references = [["Aromi is a pub.", "The Aromi pub."], ["Cocum is a coffee shop."], ["A pub: Aromi."]]
    assert asked == [(inputs, Decoding(num_beams=2))], "one generation per distinct input"
    expected = generation_metrics(texts, references)
    assert {k: result[k] for k in ("bleu", "chrf", "rouge_l", "exact_match", "references", "bleu_signature")} == \
        {k: expected[k] for k in ("bleu", "chrf", "rouge_l", "exact_match", "references", "bleu_signature")}
    assert result["inputs"] == 3 and result["references"] == 4 and result["exact_match"] == pytest.approx(100 / 3)
    assert result["samples"] == [{"input": i, "generated": t, "references": r} for i, t, r in zip(inputs, texts, references)]
    assert result["decoding"] == {"max_new_tokens": 64, "num_beams": 2, "stop": []}


def test_eval_groups_chat_rows_by_their_whole_conversation(gpt2_chatml_dir, tmp_path, capsys):
    """A chat row's input is its last user turn and the turns before it (`history`): rows with the same
    conversation and other replies are one input with several references."""
    chat = TaskSpec(method="prefix-tuning", model=str(gpt2_chatml_dir), text_fields=["messages"], labels=[], max_length=96,
                    template="{messages} {mask}", options={"prompt_length": 2}, generation=True, chat_template=None)
    task, fp = build_classifier(chat)
    save_artifact(tmp_path / "chat", chat, task, fp)
    opening = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "a film"}]
    rows = [opening + [{"role": "assistant", "content": reply}] for reply in ("good fun", "great fun")]
    rows.append([{"role": "user", "content": "a film"}, {"role": "assistant", "content": "good"}])  # no system turn
    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps({"messages": m}) + "\n" for m in rows))
    code, out, err = run(capsys, "eval", tmp_path / "chat", "--data", data, "--json", "--max-new-tokens", "3")
    assert code == 0, err
    result = json.loads(out)
    assert (result["n"], result["inputs"], result["references"]) == (3, 2, 3)
    assert [(s["input"], s["references"]) for s in result["samples"]] == [
        ({"messages": "a film", "history": opening[:1]}, ["good fun", "great fun"]), ({"messages": "a film"}, ["good"])]
    assert [s["generated"] for s in result["samples"]] == \
        generate(task, [s["input"] for s in result["samples"]], decoding=Decoding(max_new_tokens=3))


def test_evaluate_without_details_gives_the_loss_only_and_generates_nothing(gpt2_dir, monkeypatch):
    """The trainer's dev pass: cheap."""
    task, _ = build_classifier(spec(gpt2_dir, "prefix-tuning"))
    monkeypatch.setattr(generation, "generate", lambda *a, **k: pytest.fail("a dev pass generated text"))
    assert set(evaluate(task, EXAMPLES)) == {"loss", "perplexity", "n"}


# --- the command line: train, eval, generate with decoding settings ---------------------------

E2E = [  # several references per input, as E2E has
    ("name[Aromi] food[Italian]", "Aromi serves Italian food."), ("name[Cocum]", "Cocum is a coffee shop."),
    ("name[Aromi] food[Italian]", "Italian food at the Aromi."), ("name[Zizzi]", "Zizzi is cheap."),
    ("name[Zizzi]", "Zizzi is a cheap place."), ("name[Zizzi]", "Cheap food: Zizzi."),
]


def run(capsys, *argv) -> tuple[int, str, str]:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def one_error(capsys, *argv) -> str:
    code, _, err = run(capsys, *argv)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    return err.rstrip("\n")


def e2e_config(tmp_path, gpt2_dir, decoding: str = "{max_new_tokens: 6, num_beams: 2}"):
    data = tmp_path / "e2e.jsonl"
    data.write_text("".join(json.dumps({"mr": mr, "ref": ref}) + "\n" for mr, ref in E2E))
    config = tmp_path / "run.yaml"
    config.write_text(f"""
model: {gpt2_dir}
task: {{train: {data}, eval: {data}, text_fields: [mr], label_field: ref, generation: true}}
prompt: {{template: "{{mr}} means {{mask}}"}}
method: {{name: prefix-tuning, prompt_length: 4, reparam_hidden: 32}}
train: {{epochs: 1, lr: 0.05, batch_size: 6, max_length: 64, progress: false}}
decoding: {decoding}
""")
    return config, data


@pytest.fixture(scope="module")
def writer(gpt2_dir, tmp_path_factory):
    """A prefix-tuning generation task trained on E2E-like rows with `decoding: {max_new_tokens: 6, num_beams: 2}`:
    (its directory, the data file, what `train` printed)."""
    tmp = tmp_path_factory.mktemp("writer")
    config, data = e2e_config(tmp, gpt2_dir)
    out = io.StringIO()
    saved, sys.stdout = sys.stdout, out
    try:
        assert main(["train", str(config), "--out", str(tmp / "task")]) == 0
    finally:
        sys.stdout = saved
    return tmp / "task", data, json.loads(out.getvalue())


def test_train_reports_the_generation_metrics_and_stores_the_decoding(writer):
    task, _, printed = writer
    assert set(printed["eval"]) == {"bleu", "chrf", "rouge_l", "exact_match", "loss", "perplexity", "n"}
    saved = json.loads((task / "eval.json").read_text())
    assert (saved["n"], saved["inputs"], saved["references"]) == (6, 3, 6)
    assert saved["decoding"] == {"max_new_tokens": 6, "num_beams": 2, "stop": []}
    assert read_config(task)["decoding"] == {"max_new_tokens": 6, "num_beams": 2}, "only what differs from the defaults"


def test_eval_json_scores_the_generated_text_against_every_reference(writer, capsys):
    task, data, _ = writer
    code, out, err = run(capsys, "eval", task, "--data", data, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert (result["n"], result["inputs"], result["references"]) == (6, 3, 6)
    assert result["decoding"] == {"max_new_tokens": 6, "num_beams": 2, "stop": []}, "the artifact's decoding"
    assert [s["references"] for s in result["samples"]] == [
        ["Aromi serves Italian food.", "Italian food at the Aromi."], ["Cocum is a coffee shop."],
        ["Zizzi is cheap.", "Zizzi is a cheap place.", "Cheap food: Zizzi."]]
    loaded, _ = load_artifact(task)
    inputs = [s["input"] for s in result["samples"]]
    texts = generate(loaded, inputs, decoding=Decoding(max_new_tokens=6, num_beams=2))
    assert [s["generated"] for s in result["samples"]] == texts
    expected = generation_metrics(texts, [s["references"] for s in result["samples"]])
    assert (result["bleu"], result["rouge_l"], result["exact_match"]) == \
        (expected["bleu"], expected["rouge_l"], expected["exact_match"])
    assert result["loss"] == pytest.approx(evaluate(loaded, [{"mr": mr, "label": ref} for mr, ref in E2E])["loss"])


def test_eval_flags_override_the_artifacts_decoding(writer, capsys):
    task, data, _ = writer
    code, out, err = run(capsys, "eval", task, "--data", data, "--json", "--num-beams", "1", "--max-new-tokens", "3",
                         "--stop", ".", "--stop", "\n")
    assert code == 0, err
    result = json.loads(out)
    assert result["decoding"] == {"max_new_tokens": 3, "num_beams": 1, "stop": [".", "\n"]}
    loaded, _ = load_artifact(task)
    inputs = [s["input"] for s in result["samples"]]
    assert [s["generated"] for s in result["samples"]] == \
        generate(loaded, inputs, decoding=Decoding(max_new_tokens=3, stop=[".", "\n"]))


def test_eval_prints_the_generation_metrics_for_people(writer, capsys):
    task, data, _ = writer
    code, out, err = run(capsys, "eval", task, "--data", data)
    assert code == 0, err
    first, second, signature, decoding, *rest = out.splitlines()
    assert first.startswith("BLEU ") and "ROUGE-L" in first and "exact match" in first and "(3 inputs, 6 references)" in first
    assert second.startswith("loss ") and signature.startswith("BLEU signature nrefs:var|")
    assert decoding == "decoding: beam search, 2 beams, at most 6 new tokens"
    assert rest[:2] == ["", "samples (the first 3 inputs)"] and rest[2] == '  input       {"mr": "name[Aromi] food[Italian]"}'


def test_compare_shows_a_text_tasks_bleu(writer, capsys):
    task, _, _ = writer
    code, out, err = run(capsys, "compare", task)
    assert code == 0, err
    bleu = json.loads((task / "eval.json").read_text())["bleu"]
    assert f"  BLEU {bleu:.2f}  " in out.splitlines()[1], out
    code, out, err = run(capsys, "compare", task, "--json")
    assert code == 0 and json.loads(out)[0]["eval"]["bleu"] == bleu, err


def test_generate_data_writes_json_lines_with_the_references(writer, tmp_path, capsys):
    task, data, _ = writer
    out_file = tmp_path / "generated.jsonl"
    code, out, err = run(capsys, "generate", task, "--data", data, "--out", out_file)
    assert code == 0 and out == "", err
    assert err == f"wrote {len(E2E)} generated text(s) to {out_file}\n"
    rows = [json.loads(line) for line in out_file.read_text().splitlines()]
    loaded, _ = load_artifact(task)
    inputs = [{"mr": mr} for mr, _ in E2E]
    texts = generate(loaded, inputs, decoding=Decoding(max_new_tokens=6, num_beams=2))
    assert rows == [{"input": i, "generated": t, "reference": ref} for i, t, (_, ref) in zip(inputs, texts, E2E)]
    assert one_error(capsys, "generate", task, "--data", data, "--out", out_file) == \
        f"prompttune generate: error: {out_file} already exists; pass --overwrite to replace it"
    code, _, err = run(capsys, "generate", task, "--data", data, "--out", out_file, "--overwrite", "--max-new-tokens", "2")
    assert code == 0, err
    assert len(out_file.read_text().splitlines()) == len(E2E)


def test_generate_reads_standard_input_and_texts_with_the_flags_decoding(writer, capsys, monkeypatch):
    task, _, _ = writer
    loaded, _ = load_artifact(task)
    inputs = [{"mr": "name[Aromi]"}, {"mr": "name[Zizzi] food[cheap]"}]
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"name[Aromi]\n\nname[Zizzi] food[cheap]\n")))
    code, out, err = run(capsys, "generate", task, "--data", "-")
    assert code == 0, err
    texts = generate(loaded, inputs, decoding=Decoding(max_new_tokens=6, num_beams=2))
    assert [json.loads(line) for line in out.splitlines()] == [{"input": i, "generated": t} for i, t in zip(inputs, texts)]
    stop = texts[0][1:3]
    code, out, err = run(capsys, "generate", task, "--text", "name[Aromi]", "--num-beams", "3", "--stop", stop, "--json")
    assert code == 0, err
    expected = generate(loaded, inputs[:1], decoding=Decoding(max_new_tokens=6, num_beams=3, stop=[stop]))[0]
    assert json.loads(out) == {"text": "name[Aromi]", "input": inputs[0], "generated": expected}


def test_decoding_round_trips_through_an_artifact(gpt2_dir, tmp_path, capsys):
    config, _ = e2e_config(tmp_path, gpt2_dir, decoding='{max_new_tokens: 5, stop: ["\\n", "."]}')
    code, _, err = run(capsys, "train", config, "--out", tmp_path / "task", "--set", "task.eval=null")
    assert code == 0, err
    stored = read_config(tmp_path / "task")["decoding"]
    assert stored == {"max_new_tokens": 5, "stop": ["\n", "."]}
    assert Decoding.from_dict(stored) == load_config(config).decoding == Decoding(max_new_tokens=5, stop=["\n", "."])
    _, config_json = load_artifact(tmp_path / "task")
    assert config_json["decoding"] == stored


def test_a_run_resumes_with_other_decoding_settings(tmp_path):
    """Decoding does not change what is trained: an interrupted run may resume with other settings,
    or from a checkpoint written before runs recorded them."""
    from prompttune.training import check_same_run

    run = {"train": {"lr": 0.1}, "decoding": {"max_new_tokens": 64, "num_beams": 1, "stop": []}}
    check_same_run({"train": {"lr": 0.1}}, run, tmp_path)
    check_same_run(run, {**run, "decoding": {"max_new_tokens": 8, "num_beams": 4, "stop": ["."]}}, tmp_path)
    with pytest.raises(ConfigError, match="train.lr: 0.1 → 0.2"):
        check_same_run(run, {**run, "train": {"lr": 0.2}}, tmp_path)


@pytest.mark.parametrize(("item", "expected"), [
    ("decoding.num_beams=0", "decoding.num_beams must be a whole number ≥ 1, got 0"),
    ("decoding.max_new_tokens=-3", "decoding.max_new_tokens must be a whole number ≥ 1, got -3"),
    ("decoding.max_new_tokens=true", "config key 'decoding.max_new_tokens' expects int, got True"),
    ("decoding.stop=['.', '']", "decoding.stop must be a list of non-empty strings, got ['.', '']"),
    ("decoding.stop=[a, b, c, d, e]", "decoding.stop holds 5 strings; at most 4"),
    ("decoding.beams=2", "unknown config key(s) ['decoding.beams']; valid keys here: ['max_new_tokens', 'num_beams', 'stop']"),
])
def test_a_bad_decoding_config_is_one_line_naming_the_key(item, expected, gpt2_dir, tmp_path, capsys):
    config, _ = e2e_config(tmp_path, gpt2_dir)
    assert one_error(capsys, "train", config, "--out", tmp_path / "out", "--set", item) == f"prompttune train: error: {expected}"
    assert not (tmp_path / "out").exists()


def test_a_bad_decoding_in_config_json_is_one_line_naming_the_key(writer, tmp_path, capsys):
    import shutil

    task, data, _ = writer
    edited = tmp_path / "edited"
    shutil.copytree(task, edited)
    config = json.loads((edited / "config.json").read_text())
    (edited / "config.json").write_text(json.dumps({**config, "decoding": {"num_beams": 0}}))
    assert one_error(capsys, "eval", edited, "--data", data) == (
        f"prompttune eval: error: {edited / 'config.json'}: key 'decoding' holds {{\"num_beams\": 0}}, expected decoding "
        "settings (decoding.num_beams must be a whole number ≥ 1, got 0)")


@pytest.mark.parametrize(("flags", "expected"), [
    (["--num-beams", "0"], "argument --num-beams: expected a whole number ≥ 1, got '0' (see prompttune generate --help)"),
    (["--stop", ""], "argument --stop: expected a non-empty string that ends the generated text, got '' "
                     "(see prompttune generate --help)"),
    (["--stop", "a"] * 5, "--stop is given 5 times; a decoding takes at most 4 stop strings"),
])
def test_bad_decoding_flags_are_one_line(flags, expected, writer, capsys):
    task, _, _ = writer
    assert one_error(capsys, "generate", task, "--text", "name[Aromi]", *flags) == f"prompttune generate: error: {expected}"


def test_more_new_tokens_than_the_model_has_positions_for_is_one_line(writer, capsys):
    task, data, _ = writer  # GPT-2's position table: 128 here, 4 of them taken by the prefix
    for command, given in (("generate", ["--text", "name[Aromi]"]), ("eval", ["--data", data])):
        line = one_error(capsys, command, task, *given, "--max-new-tokens", "1000")
        assert line.startswith(f"prompttune {command}: error: input 1 is ") and "max_new_tokens is 1000: together more " \
            "than the 124 positions the model has for this task" in line, line


def test_a_bad_generate_data_row_is_one_line_naming_the_file_and_row(writer, tmp_path, capsys):
    task, _, _ = writer
    data = tmp_path / "bad.jsonl"
    data.write_text('{"mr": "name[Aromi]"}\n{"name": "Cocum"}\n')
    assert one_error(capsys, "generate", task, "--data", data) == \
        f"prompttune generate: error: {data}:2: the row has no column(s) ['mr']"


def test_decoding_flags_on_eval_of_a_classification_task_are_refused(gpt2_dir, tmp_path, capsys):
    clf_spec = TaskSpec(method="zero-shot", model=str(gpt2_dir), text_fields=["text"], labels=["0", "1"],
                        template="{text} is {mask}", verbalizer={"0": ["bad"], "1": ["good"]})
    clf, fp = build_classifier(clf_spec)
    save_artifact(tmp_path / "clf", clf_spec, clf, fp)
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "a film", "label": "1"}\n')
    assert one_error(capsys, "eval", tmp_path / "clf", "--data", data, "--num-beams", "2") == (
        "prompttune eval: error: --num-beams sets how text is generated; this task classifies (eval generates for "
        "generation tasks only)")
