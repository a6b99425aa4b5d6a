"""In-context learning and chain-of-thought on a causal LM (tiny random GPT-2: the mechanics).

The property the method rests on: scoring a query after a cached demonstration prefix gives the
same label-word log-probabilities as re-encoding prefix + query, to float tolerance, on the fast
path (single-token words, nothing after the mask) and the general one (multi-token words, text
after the mask)."""

from __future__ import annotations

import json

import pytest
import torch

from prompttune.backbones import load_backbone
from prompttune.chain_of_thought import answer_template, cut_reasoning, reasoning_template
from prompttune.cli import main
from prompttune.config import load_config
from prompttune.demonstrations import filled
from prompttune.errors import ConfigError, ModelError
from prompttune.in_context import InContextClassifier, choose_context
from prompttune.recipes import run_training
from prompttune.templates import parse_template, segment_texts
from prompttune.verbalizers import parse_verbalizer

CONTEXT = [{"sentence": "it was great", "label": "1"}, {"sentence": "a bad film", "label": "0"},
           {"sentence": "good fun", "label": "1"}, {"sentence": "so boring", "label": "0"}]
QUERIES = [{"sentence": "a good film"}, {"sentence": "it was a bad and boring movie , very long"}, {"sentence": "fun"}]


def demonstration_text(template, example: dict, word: str) -> str:
    """One demonstration as plain text: the template with the example's fields and `word` at the mask."""
    return "".join(text for _, text in segment_texts(filled(template, word), example)).strip()


def scores(clf, queries, *, cache: bool) -> torch.Tensor:
    clf.scorer.use_cache = cache
    with torch.no_grad():
        return clf(clf.collate(queries))


@pytest.mark.parametrize("template, words", [
    ("review : {sentence} sentiment : {mask}", {0: "bad", 1: "good"}),              # fast path: one pass per batch
    ("review : {sentence} sentiment : {mask} .", {0: ["bad", "boring"], 1: "good"}),  # text after the mask
    ("review : {sentence} sentiment : {mask}", {0: "boringly", 1: "wonderful"}),     # multi-token label words
])
def test_cached_prefix_scores_equal_re_encoding(gpt2, template, words):
    clf = InContextClassifier(gpt2, parse_template(template), parse_verbalizer(words), 24, CONTEXT,
                              instruction="classify the review")
    assert len(clf.scorer.prefix) > 20, "the demonstrations should make a prefix of real length"
    cached, full = scores(clf, QUERIES, cache=True), scores(clf, QUERIES, cache=False)
    torch.testing.assert_close(cached, full, rtol=0, atol=1e-5,
                               msg=lambda m: f"cached-prefix scores differ from re-encoding the prefix: {m}")
    again = scores(clf, QUERIES[:1], cache=True)
    torch.testing.assert_close(again, cached[:1], rtol=0, atol=1e-5,
                               msg=lambda m: f"a second call changed the scores (was the kept cache extended?): {m}")
    assert clf.scorer.prefix.layers()[0][0].shape[-2] == len(clf.scorer.prefix), "the kept keys grew past the prefix"


def test_the_prefix_is_the_instruction_and_the_demonstrations_written_with_the_template(gpt2):
    template = parse_template("review : {sentence} sentiment : {mask} .")
    verbalizer = parse_verbalizer({0: "bad", 1: "good"})
    clf = InContextClassifier(gpt2, template, verbalizer, 24, CONTEXT[:2], instruction="classify the review")
    text = gpt2.tokenizer.decode(clf.scorer.prefix.ids)
    assert text == "classify the review\n\nreview : it was great sentiment : good .\n\nreview : a bad film sentiment : bad .\n\n", text
    assert demonstration_text(template, CONTEXT[1], "bad") == "review : a bad film sentiment : bad ."


def test_queries_are_truncated_not_the_demonstrations_or_the_template(gpt2):
    clf = InContextClassifier(gpt2, parse_template("review : {sentence} sentiment : {mask}"),
                              parse_verbalizer({0: "bad", 1: "good"}), 12, CONTEXT)
    batch = clf.collate([{"sentence": " ".join(["good"] * 50)}])
    assert batch["ids"].shape[1] <= 12, "the query exceeds max_length"
    tail = gpt2.tokenizer.decode(batch["ids"][0, : int(batch["attn"][0].sum())])
    assert tail.startswith("review :") and tail.endswith("sentiment :"), tail


def test_without_instruction_or_demonstrations_it_is_zero_shot(gpt2):
    from prompttune.models import PromptClassifier

    template, verbalizer = parse_template("review : {sentence} sentiment : {mask}"), parse_verbalizer({0: "bad", 1: "good"})
    icl = InContextClassifier(gpt2, template, verbalizer, 24, [])
    plain = PromptClassifier(gpt2, template, verbalizer, 24)
    with torch.no_grad():
        torch.testing.assert_close(icl(icl.collate(QUERIES)), plain(plain.collate(QUERIES)), rtol=0, atol=1e-6)


def test_choose_context_is_balanced_seeded_and_sized():
    pool = [{"sentence": f"s{i}", "label": str(i % 3)} for i in range(30)]
    chosen = choose_context(pool, 7, seed=1)
    counts = sorted(sum(ex["label"] == c for ex in chosen) for c in "012")
    assert len(chosen) == 7 and counts == [2, 2, 3], counts
    assert chosen == choose_context(pool, 7, seed=1) and chosen != choose_context(pool, 7, seed=2)
    with pytest.raises(ConfigError, match="only 30"):
        choose_context(pool, 31, seed=1)


def test_bad_settings_are_one_clear_error(gpt2, bert_dir):
    template, verbalizer = parse_template("review : {sentence} sentiment : {mask}"), parse_verbalizer({0: "bad", 1: "good"})
    with pytest.raises(ModelError, match="causal LM"):
        InContextClassifier(load_backbone(str(bert_dir)), template, verbalizer, 24, CONTEXT)
    with pytest.raises(ConfigError, match="exceeds the model's 128 positions"):
        InContextClassifier(gpt2, template, verbalizer, 24, CONTEXT * 8)
    with pytest.raises(ConfigError, match="context_examples: 0"):
        InContextClassifier(gpt2, template, verbalizer, 24, CONTEXT, chain_of_thought="zero-shot")
    with pytest.raises(ConfigError, match="'reasoning' column"):
        InContextClassifier(gpt2, template, verbalizer, 24, CONTEXT, chain_of_thought="few-shot")
    with pytest.raises(ConfigError, match="chain_of_thought must be"):
        InContextClassifier(gpt2, template, verbalizer, 24, [], chain_of_thought="sometimes")


# --- chain of thought -------------------------------------------------------------------------

def test_the_two_stage_templates_render_as_kojima_et_al():
    template = parse_template("Q: {question}\nA: {mask}.")
    stage1 = reasoning_template(template, "zero-shot")
    stage2 = answer_template(template, "zero-shot", "reasoning")
    ex = {"question": "Is it good?", "reasoning": "It says good."}
    assert demonstration_text(stage1, ex, "") == "Q: Is it good?\nA: Let's think step by step."
    assert demonstration_text(stage2, ex, "yes") == \
        "Q: Is it good?\nA: Let's think step by step. It says good. Therefore, the answer is yes."
    assert demonstration_text(answer_template(template, "few-shot", "reasoning"), ex, "yes") == \
        "Q: Is it good?\nA: It says good. Therefore, the answer is yes."


def test_cut_reasoning_stops_at_the_answer_or_a_blank_line():
    assert cut_reasoning(" It is fun.\nSo good. Therefore, the answer is yes.") == "It is fun. So good."
    assert cut_reasoning(" good film\n\nreview : next one") == "good film"
    assert cut_reasoning("\n\nThe movie was good.\n\nThe movie") == "The movie was good.", "a leading blank line is not the end"


@pytest.mark.parametrize("mode", ["zero-shot", "few-shot"])
def test_chain_of_thought_generates_reasoning_then_scores_the_answer_after_it(gpt2, mode):
    template, verbalizer = parse_template("review : {sentence} sentiment : {mask}"), parse_verbalizer({0: "bad", 1: "good"})
    context = [] if mode == "zero-shot" else [{**ex, "reasoning": "it says so"} for ex in CONTEXT[:2]]
    clf = InContextClassifier(gpt2, template, verbalizer, 40, context, chain_of_thought=mode, max_reasoning_tokens=4)
    out = clf.explain(QUERIES[:2])
    assert all(isinstance(o["reasoning"], str) and o["label"] in ("0", "1") for o in out), out
    # Stage 2 is the answer template with the reasoning filled in, scored after the prefix.
    direct = InContextClassifier(gpt2, template, verbalizer, 40, context, chain_of_thought=mode)
    filled = [{**q, "reasoning": o["reasoning"]} for q, o in zip(QUERIES[:2], out)]
    from prompttune.models import PromptClassifier

    with torch.no_grad():
        expected = PromptClassifier.collate(direct, filled)
        probs = direct(expected).softmax(-1)
    for o, p in zip(out, probs):
        assert abs(o["probabilities"]["1"] - float(p[1])) < 1e-5, "explain's answer is not the stage-2 score"
    # Reasoning is greedy: the same input gives the same reasoning.
    assert clf.explain(QUERIES[:1])[0]["reasoning"] == out[0]["reasoning"]


def test_a_demonstrations_reasoning_is_one_line_as_generated_reasoning_is(gpt2):
    template, verbalizer = parse_template("review : {sentence} sentiment : {mask}"), parse_verbalizer({0: "bad", 1: "good"})
    messy = [{**ex, "reasoning": "it says\n\nso   here"} for ex in CONTEXT[:2]]
    clean = [{**ex, "reasoning": "it says so here"} for ex in CONTEXT[:2]]
    a = InContextClassifier(gpt2, template, verbalizer, 40, messy, chain_of_thought="few-shot")
    b = InContextClassifier(gpt2, template, verbalizer, 40, clean, chain_of_thought="few-shot")
    assert a.scorer.prefix.ids == b.scorer.prefix.ids, "a blank line in a demonstration's reasoning reached the prompt"


# --- end to end --------------------------------------------------------------------------------

def write_config(tmp_path, gpt2_dir, method: str) -> str:
    data = tmp_path / "train.tsv"
    rows = ["label\tsentence\treasoning"] + [f"{ex['label']}\t{ex['sentence']}\tit is {ex['sentence']}" for ex in CONTEXT * 2]
    data.write_text("\n".join(rows) + "\n")
    path = tmp_path / "run.yaml"
    path.write_text(f"""
model: {gpt2_dir}
task: {{train: {data}, eval: {data}, text_fields: [sentence]}}
prompt: {{template: "review : {{sentence}} sentiment : {{mask}}", verbalizer: {{0: bad, 1: good}}}}
method: {method}
train: {{max_length: 24, progress: false}}
""")
    return str(path)


def test_in_context_task_saves_its_demonstrations_and_reloads_identically(tmp_path, gpt2_dir, capsys):
    from prompttune import load_artifact

    cfg = write_config(tmp_path, gpt2_dir, '{name: in-context, context_examples: 4, instruction: "classify the review"}')
    summary = run_training(load_config(cfg), tmp_path / "task", log=lambda _: None)
    assert summary["trainable_parameters"] == 0
    saved = json.loads((tmp_path / "task" / "config.json").read_text())
    assert len(saved["demonstrations"]) == 4 and sorted(ex["label"] for ex in saved["demonstrations"]) == ["0", "0", "1", "1"]
    clf, _ = load_artifact(tmp_path / "task")
    assert clf.scorer.prefix.ids[:4] == gpt2_tokens(clf, "classify the review")[:4]
    assert main(["eval", str(tmp_path / "task"), "--data", str(tmp_path / "train.tsv"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == summary["eval"]["accuracy"]


def gpt2_tokens(clf, text):
    return clf.tokenizer(text, add_special_tokens=False)["input_ids"]


def test_few_shot_chain_of_thought_through_the_cli_prints_reasoning(tmp_path, gpt2_dir, capsys):
    cfg = write_config(tmp_path, gpt2_dir, "{name: in-context, context_examples: 2, chain_of_thought: few-shot, "
                                           "max_reasoning_tokens: 3}")
    assert main(["train", cfg, "--out", str(tmp_path / "cot")]) == 0, capsys.readouterr().err
    saved = json.loads((tmp_path / "cot" / "config.json").read_text())
    assert all(ex["reasoning"].startswith("it is") for ex in saved["demonstrations"]), "demonstrations lost their reasoning"
    capsys.readouterr()
    assert main(["generate", str(tmp_path / "cot"), "--text", "a good film", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert set(row) >= {"reasoning", "label", "probabilities"} and row["label"] in ("0", "1")


@pytest.mark.parametrize("override, message", [
    ("method.chain_of_thought=always", "chain_of_thought must be"),
    ("method.name=prompt-finetune", None),
])
def test_chain_of_thought_belongs_to_in_context(tmp_path, gpt2_dir, override, message):
    cfg = write_config(tmp_path, gpt2_dir, "{name: in-context, chain_of_thought: zero-shot, context_examples: 0}")
    if message is None:
        message = "setting of method in-context"
    with pytest.raises(ConfigError, match=message):
        load_config(cfg, [override])


def test_contextual_calibration_divides_out_the_content_free_prior(gpt2):
    template, verbalizer = parse_template("review : {sentence} sentiment : {mask}"), parse_verbalizer({0: "bad", 1: "good"})
    raw = InContextClassifier(gpt2, template, verbalizer, 24, CONTEXT)
    cal = InContextClassifier(gpt2, template, verbalizer, 24, CONTEXT, calibrate=True)
    with torch.no_grad():
        free = raw(raw.collate([{"sentence": t} for t in ("N/A", "", "[MASK]")])).softmax(-1).mean(0)
        expected = raw(raw.collate(QUERIES)).log_softmax(-1) - free.log()
        got = cal(cal.collate(QUERIES))
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6,
                               msg=lambda m: f"calibrated scores are not log p(class) - log p_cf(class) (Zhao et al. 2021): {m}")
    assert not torch.allclose(got.softmax(-1), raw(raw.collate(QUERIES)).softmax(-1)), "calibration changed nothing"
