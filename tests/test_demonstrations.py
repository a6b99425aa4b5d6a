"""LM-BFF demonstrations (Gao et al. 2021, §6): one labelled example per class appended to every
input, written with the task's template and its label word, chosen at random or by similarity."""

from __future__ import annotations

import json

import pytest

from prompttune import load_artifact
from prompttune.config import load_config
from prompttune.demonstrations import Demonstrations
from prompttune.errors import ConfigError, DataError
from prompttune.models import PromptClassifier
from prompttune.recipes import run_training
from prompttune.sentence_encoder import sentence_encoder
from prompttune.templates import parse_template
from prompttune.verbalizers import parse_verbalizer

POOL = [{"sentence": s, "label": "1"} for s in ("a good film", "great fun", "it was good", "very fun movie")] + \
       [{"sentence": s, "label": "0"} for s in ("a bad film", "so boring", "it was terrible", "awful movie")]
VERBALIZER = parse_verbalizer({0: "bad", 1: "good"})
TEMPLATE = parse_template("{sentence} it was {mask} .")


def decoded(clf, batch, row=0) -> list[str]:
    ids = batch["ids1"][row][: int(batch["attn1"][row].sum())]
    return clf.tokenizer.convert_ids_to_tokens(ids.tolist())


def test_each_input_gets_one_demonstration_per_class_written_with_its_label_word(bert):
    clf = PromptClassifier(bert, TEMPLATE, VERBALIZER, 64, demonstrations=Demonstrations(POOL, VERBALIZER, ["sentence"]))
    tokens = decoded(clf, clf.collate([{"sentence": "a fun film"}]))
    assert tokens.count("[SEP]") == 3 and tokens.count("[MASK]") == 1, tokens
    first, second = " ".join(tokens).split("[SEP]")[1:3]
    assert first.strip().endswith("it was bad .") and second.strip().endswith("it was good ."), tokens


def test_an_input_from_the_pool_never_gets_itself_and_choice_is_reproducible(bert):
    demos = Demonstrations(POOL, VERBALIZER, ["sentence"])
    for ex in POOL:
        filled = demos.fill([ex])[0]
        assert ex["sentence"] not in (filled["demo:0:sentence"], filled["demo:1:sentence"]), filled
        assert demos.fill([ex]) == [filled], "the same input should get the same demonstrations"


def test_demonstrations_fit_max_length_by_cutting_text_not_template_mask_or_label_words(bert):
    long_pool = [{**ex, "sentence": " ".join([ex["sentence"]] * 20)} for ex in POOL]
    clf = PromptClassifier(bert, TEMPLATE, VERBALIZER, 40, demonstrations=Demonstrations(long_pool, VERBALIZER, ["sentence"]))
    batch = clf.collate([{"sentence": " ".join(["fun"] * 50)}])
    tokens = decoded(clf, batch)
    assert len(tokens) <= 40, len(tokens)
    text = " ".join(tokens)
    for piece in ("it was [MASK] .", "it was bad .", "it was good ."):
        assert piece in text, f"{piece!r} was cut: {text}"
    assert tokens.count("[SEP]") == 3 and tokens[0] == "[CLS]"
    parts = [part.split() for part in text.replace("[CLS]", "").split("[SEP]")[:3]]
    assert all(len(p) >= 9 for p in parts), f"text was not shared out between input and demonstrations: {parts}"


def test_similar_selection_samples_from_the_most_similar_half(bert, bert_dir):
    demos = Demonstrations(POOL, VERBALIZER, ["sentence"], selection="similar", encoder=str(bert_dir))
    encoder = sentence_encoder(str(bert_dir))
    query = {"sentence": "a good fun film"}
    chosen = demos.fill([query])[0]
    q = encoder.encode([query["sentence"]])[0]
    for j, label in enumerate(("0", "1")):
        group = [ex["sentence"] for ex in POOL if ex["label"] == label]
        sims = encoder.encode(group) @ q
        top_half = {group[i] for i in sims.argsort(descending=True)[:2].tolist()}
        assert chosen[f"demo:{j}:sentence"] in top_half, (chosen, top_half)


def test_errors_name_the_problem():
    with pytest.raises(ConfigError, match="demo_selection"):
        Demonstrations(POOL, VERBALIZER, ["sentence"], selection="nearest")
    with pytest.raises(DataError, match="label '0'"):
        Demonstrations(POOL[:4], VERBALIZER, ["sentence"])
    with pytest.raises(DataError, match="other than the input itself"):
        Demonstrations(POOL[:5], VERBALIZER, ["sentence"]).fill([POOL[4]])


def write_config(tmp_path, bert_dir) -> str:
    data = tmp_path / "train.tsv"
    data.write_text("label\tsentence\n" + "\n".join(f"{ex['label']}\t{ex['sentence']}" for ex in POOL) + "\n")
    path = tmp_path / "run.yaml"
    path.write_text(f"""
model: {bert_dir}
task: {{train: {data}, eval: {data}, text_fields: [sentence]}}
prompt: {{template: "{{sentence}} it was {{mask}} .", verbalizer: {{0: bad, 1: good}}}}
method: {{name: prompt-finetune, demonstrations: 1}}
train: {{epochs: 4, lr: 1.0e-3, batch_size: 4, max_length: 48, progress: false}}
""")
    return str(path)


def test_prompt_finetune_with_demonstrations_trains_saves_the_pool_and_reloads_identically(tmp_path, bert_dir):
    summary = run_training(load_config(write_config(tmp_path, bert_dir)), tmp_path / "task", log=lambda _: None)
    losses = [h["train_loss"] for h in summary["history"]]
    assert losses[-1] < losses[0], f"training loss did not fall with demonstrations: {losses}"
    saved = json.loads((tmp_path / "task" / "config.json").read_text())
    assert saved["demonstrations"] == [{"sentence": ex["sentence"], "label": ex["label"]} for ex in saved["demonstrations"]]
    assert len(saved["demonstrations"]) == len(POOL)
    clf, _ = load_artifact(tmp_path / "task")
    from prompttune.evaluation import evaluate

    assert evaluate(clf, POOL)["accuracy"] == summary["eval"]["accuracy"]


@pytest.mark.parametrize("override, message", [
    ("method.demonstrations=-1", "must be ≥ 0"),
    ("method.name=finetune", "head or generation"),
    ("method.demo_selection=best", "random or similar"),
])
def test_bad_demonstration_settings_fail_before_loading_a_model(tmp_path, bert_dir, override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write_config(tmp_path, bert_dir), [override])
