"""Run configs (strict parsing, --set overrides) and task data (file formats, few-shot sampling)."""

from __future__ import annotations

import copy
import json

import pytest

from prompttune import TaskSpec, build_classifier
from prompttune.config import apply_overrides, load_config
from prompttune.data import few_shot_split, held_out_split, load_examples, read_rows, sample_per_class
from prompttune.errors import ConfigError, DataError, TemplateError, VerbalizerError
from prompttune.methods import method_names

BASE = {
    "model": "tiny-bert",
    "task": {"train": "train.tsv", "text_fields": ["sentence"]},
    "prompt": {"template": "{sentence} It was {mask}.", "verbalizer": {0: "terrible", 1: "great"}},
    "method": {"name": "prompt-finetune"},
}


def config_with(**sections) -> dict:
    """BASE with some sections' keys replaced, e.g. config_with(train={"lr": 1e-3})."""
    raw = copy.deepcopy(BASE)
    for name, values in sections.items():
        if isinstance(values, dict) and isinstance(raw.get(name), dict):
            raw[name].update(values)
        else:
            raw[name] = values
    return raw


# --- config -------------------------------------------------------------------------------


def test_a_valid_config_becomes_dataclasses_with_defaults():
    cfg = load_config(raw=config_with(train={"epochs": 3, "lr": 2e-5}))
    assert cfg.model == "tiny-bert"
    assert cfg.task.text_fields == ["sentence"] and cfg.task.label_field == "label" and cfg.task.shots is None
    assert (cfg.train.epochs, cfg.train.lr, cfg.train.batch_size) == (3, 2e-5, 8)
    assert cfg.method.name == "prompt-finetune"


def test_a_config_file_is_read_from_yaml(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "model: tiny-bert\n"
        "task: {train: train.tsv, text_fields: [sentence], shots: 16}\n"
        "prompt:\n  template: '{sentence} It was {mask}.'\n  verbalizer: {0: terrible, 1: great}\n"
        "train: {lr: 1e-5, epochs: 2}\n"
    )
    cfg = load_config(path)
    assert cfg.task.shots == 16 and cfg.train.epochs == 2
    assert cfg.train.lr == 1e-5 and isinstance(cfg.train.lr, float), "YAML reads 1e-5 as text; it must become a float"


def test_an_unknown_top_level_key_is_named_with_the_valid_keys():
    with pytest.raises(ConfigError) as err:
        load_config(raw=config_with(modle="x"))
    msg = str(err.value)
    assert "['modle']" in msg and "valid keys here:" in msg and "'model'" in msg and "'train'" in msg


def test_an_unknown_nested_key_is_named_with_its_section_path():
    with pytest.raises(ConfigError) as err:
        load_config(raw=config_with(train={"learning_rate": 1e-3}))
    msg = str(err.value)
    assert "['train.learning_rate']" in msg and "'lr'" in msg and "'epochs'" in msg


@pytest.mark.parametrize(
    ("sections", "expected"),
    [
        ({"train": {"epochs": "ten"}}, "config key 'train.epochs' expects int, got 'ten'"),
        ({"train": {"epochs": 2.5}}, "config key 'train.epochs' expects int, got 2.5"),
        ({"train": {"lr": "fast"}}, "config key 'train.lr' expects float, got 'fast'"),
        ({"train": {"lr": True}}, "config key 'train.lr' expects float, got True"),
        ({"task": {"shots": True}}, "config key 'task.shots' expects int, got True"),
        ({"train": {"progress": "yes please"}}, "config key 'train.progress' expects bool"),
        ({"model": None}, "config key 'model' cannot be null"),
        ({"task": "train.tsv"}, "task must be a mapping"),
        ({"train": {"epochs": 0}}, "train.epochs must be a positive whole number, got 0"),
        ({"train": {"lr": -1.0}}, "train.lr must be a finite number > 0, got -1.0"),
        ({"task": {"shots": 0}}, "task.shots must be ≥ 1 or null"),
        ({"model_kind": "diffusion"}, "model_kind must be one of"),
        ({"method": {"name": "p-tuning", "encoder": "gru"}}, "method.encoder must be one of ['lstm', 'mlp', 'none'], got 'gru'"),
        ({"method": {"name": "prompt-tuning", "init": "zeros"}}, "method.init must be one of ['vocab', 'random']"),
        ({"method": {"name": "prefix-tuning", "prompt_length": 0}}, "method.prompt_length must be ≥ 1, got 0"),
        ({"method": {"name": "prefix-tuning", "reparameterize": "maybe"}}, "config key 'method.reparameterize' expects bool"),
        ({"method": {"name": "prefix-tuning", "init_from": "most_similar"}}, "most_similar needs method.prompt_bank"),
        ({"method": {"name": "p-tuning-v2", "lenght": 3}}, "unknown config key(s) ['method.lenght']"),
    ],
)
def test_a_value_of_the_wrong_type_or_range_names_the_key(sections, expected):
    with pytest.raises(ConfigError) as err:
        load_config(raw=config_with(**sections))
    assert expected in str(err.value), f"expected {expected!r} in: {err.value}"


def test_an_unknown_method_lists_the_available_ones():
    with pytest.raises(ConfigError) as err:
        load_config(raw=config_with(method={"name": "magic"}))
    assert "unknown method.name 'magic'" in str(err.value)
    assert str(method_names()) in str(err.value)
    assert {"zero-shot", "prompt-finetune", "finetune"} <= set(method_names())


def test_a_prompt_method_without_template_is_refused_and_a_head_method_needs_none():
    with pytest.raises(ConfigError, match="method 'prompt-finetune' needs prompt.template and prompt.verbalizer"):
        load_config(raw=config_with(prompt={"template": None}))
    cfg = load_config(raw=config_with(prompt=None, method={"name": "finetune"}))
    assert cfg.prompt.template is None
    cfg = load_config(raw=config_with(prompt=None, method={"name": "p-tuning-v2", "head": True}))
    assert cfg.method.options()["head"] is True and "name" not in cfg.method.options()
    with pytest.raises(ConfigError, match="method 'p-tuning-v2' needs prompt.template"):
        load_config(raw=config_with(prompt=None, method={"name": "p-tuning-v2"}))


def test_a_list_of_methods_is_read_and_each_name_checked():
    cfg = load_config(raw=config_with(prompt={"template": "{soft:2} {sentence} It was {mask}."},
                                      method={"name": ["p-tuning", "lora"], "lora_rank": 4}))
    assert cfg.method.name == ["p-tuning", "lora"] and cfg.method.lora_rank == 4
    with pytest.raises(ConfigError, match="unknown method.name 'lorra'"):
        load_config(raw=config_with(method={"name": ["p-tuning", "lorra"]}))


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{sentence It was {mask}.", "unbalanced '{'"),
        ("{sentence} It was {mask}. {mask}", "more than one {mask}"),
        ("{review} It was {mask}.", "uses field(s) ['review'] that the data does not have"),
    ],
)
def test_a_broken_template_fails_when_the_config_is_loaded(template, expected):
    with pytest.raises(TemplateError) as err:
        load_config(raw=config_with(prompt={"template": template}))
    assert expected in str(err.value)


def test_a_broken_verbalizer_fails_when_the_config_is_loaded():
    with pytest.raises(VerbalizerError, match="label 1 has an empty or non-text label word"):
        load_config(raw=config_with(prompt={"verbalizer": {0: "bad", 1: [""]}}))


def test_set_overrides_values_at_any_depth_and_reads_them_as_yaml():
    cfg = load_config(
        raw=config_with(),
        overrides=["train.lr=1e-5", "train.epochs=3", "task.text_fields=[sentence, other]", "method.name=finetune",
                   "task.shots=null", "model=other-model"],
    )
    assert cfg.train.lr == 1e-5 and isinstance(cfg.train.lr, float)
    assert cfg.train.epochs == 3
    assert cfg.task.text_fields == ["sentence", "other"]
    assert cfg.method.name == "finetune" and cfg.task.shots is None and cfg.model == "other-model"


def test_set_takes_a_value_that_is_not_yaml_as_plain_text():
    cfg = load_config(raw=config_with(), overrides=["prompt.template={sentence} It was {mask}!"])
    assert cfg.prompt.template == "{sentence} It was {mask}!"


def test_set_creates_missing_sections_and_applies_in_order():
    raw = apply_overrides({}, ["train.lr=2e-5", "train.lr=3e-5", "task.seed=7"])
    assert raw == {"train": {"lr": "3e-5"}, "task": {"seed": 7}}  # made a float by load_config


def test_set_fills_a_section_left_empty_in_the_yaml(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("prompt: {template: '{sentence} It was {mask}.', verbalizer: {0: bad, 1: good}}\ntrain:\n")
    assert load_config(path, ["train.epochs=2"]).train.epochs == 2


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.lr", "--set expects key=value, got 'train.lr'"),
        ("model.name=x", "--set model.name: 'model' is not a section"),
        ("train.epochs=[1", "config key 'train.epochs' expects int, got '[1'"),  # not YAML: kept as text
        ("train.lrr=1", "['train.lrr']"),
    ],
)
def test_a_bad_set_override_is_an_error_naming_it(override, expected):
    with pytest.raises(ConfigError) as err:
        load_config(raw=config_with(), overrides=[override])
    assert expected in str(err.value)


def test_a_missing_or_invalid_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:2: not valid YAML: expected ',' or '\]'"):
        load_config(bad)


# --- data files -----------------------------------------------------------------------------

ROWS = [
    {"sentence": '"quoted" start, with a comma', "label": "1"},
    {"sentence": "a dull film", "label": "0"},
    {"sentence": "great fun", "label": "1"},
]
EXPECTED = [{"sentence": r["sentence"], "label": r["label"]} for r in ROWS]


def test_a_tsv_file_is_read_without_quote_processing(tmp_path):
    path = tmp_path / "d.tsv"
    path.write_text("label\tsentence\n" + "".join(f"{r['label']}\t{r['sentence']}\n" for r in ROWS), encoding="utf-8")
    assert load_examples(path, ["sentence"]) == EXPECTED


def test_a_csv_file_is_read_with_quoting_and_a_byte_order_mark(tmp_path):
    import csv

    path = tmp_path / "d.csv"
    with open(path, "w", newline="", encoding="utf-8-sig") as f:
        writer = csv.DictWriter(f, fieldnames=["label", "sentence"])
        writer.writeheader()
        writer.writerows(ROWS)
    assert load_examples(path, ["sentence"]) == EXPECTED


def test_a_jsonl_file_is_read_and_numeric_labels_become_text(tmp_path):
    path = tmp_path / "d.jsonl"
    lines = [json.dumps({"sentence": r["sentence"], "label": int(r["label"]), "extra": 1}) for r in ROWS]
    path.write_text("\n".join(lines) + "\n\n", encoding="utf-8")
    assert load_examples(path, ["sentence"]) == EXPECTED


def test_a_saved_hugging_face_dataset_directory_is_read(tmp_path):
    datasets = pytest.importorskip("datasets", reason="reading saved datasets needs the `datasets` test dependency")
    ds = datasets.Dataset.from_dict({"sentence": [r["sentence"] for r in ROWS], "label": [int(r["label"]) for r in ROWS]})
    ds.save_to_disk(str(tmp_path / "single"))
    assert load_examples(tmp_path / "single", ["sentence"]) == EXPECTED
    datasets.DatasetDict({"train": ds, "test": ds.select([0])}).save_to_disk(str(tmp_path / "splits"))
    assert load_examples(tmp_path / "splits", ["sentence"]) == EXPECTED, "a DatasetDict is read through its train split"


def test_text_fields_and_the_label_column_can_have_other_names(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("review,stars,premise\nnice,5,p1\nbad,1,p2\n", encoding="utf-8")
    assert load_examples(path, ["review", "premise"], "stars") == [
        {"review": "nice", "premise": "p1", "label": "5"},
        {"review": "bad", "premise": "p2", "label": "1"},
    ]
    assert load_examples(path, ["review"], None) == [{"review": "nice"}, {"review": "bad"}]


def test_a_missing_column_error_names_it_and_the_columns_there_are(tmp_path):
    path = tmp_path / "d.tsv"
    path.write_text("label\tsentence\n1\tfun\n", encoding="utf-8")
    with pytest.raises(DataError) as err:
        load_examples(path, ["sentence", "hypothesis"], "gold")
    assert "no column(s) ['hypothesis', 'gold']" in str(err.value) and "['label', 'sentence']" in str(err.value)


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("missing.tsv", None, "does not exist"),
        ("d.txt", "label sentence\n", "expected a .tsv, .csv, .json or .jsonl file"),
        ("d.jsonl", '{"sentence": "ok", "label": 1}\n{broken\n', "d.jsonl:2: not valid JSON"),
        ("empty.tsv", "label\tsentence\n", "has no rows"),
    ],
)
def test_an_unreadable_data_file_is_an_error_naming_the_problem(tmp_path, name, content, expected):
    path = tmp_path / name
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=expected.replace(".", r"\.")):
        load_examples(path, ["sentence"])


def test_a_jsonl_row_lacking_a_column_is_an_error_naming_the_row(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"sentence": "ok", "label": 1}\n{"sentence": "no label"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"d\.jsonl:2: the row has no column\(s\) \['label'\]"):
        load_examples(path, ["sentence"])


def test_a_directory_that_is_not_a_saved_dataset_is_named(tmp_path):
    pytest.importorskip("datasets", reason="reading saved datasets needs the `datasets` test dependency")
    with pytest.raises(DataError, match="is not a saved Hugging Face dataset"):
        read_rows(tmp_path)


# --- few-shot sampling ----------------------------------------------------------------------


def labelled(n_per_class: dict[str, int]) -> list[dict]:
    return [{"sentence": f"{label} example {i}", "label": label} for label, n in n_per_class.items() for i in range(n)]


def test_few_shot_split_draws_k_per_class_for_train_and_a_disjoint_k_for_dev():
    examples = labelled({"0": 20, "1": 30, "2": 12})
    train, dev = few_shot_split(examples, 4, seed=13)
    for split in (train, dev):
        counts = {label: sum(ex["label"] == label for ex in split) for label in ("0", "1", "2")}
        assert counts == {"0": 4, "1": 4, "2": 4}
    assert not {ex["sentence"] for ex in train} & {ex["sentence"] for ex in dev}, "train and dev overlap"


def test_the_same_seed_draws_the_same_sample_and_another_seed_another():
    examples = labelled({"0": 50, "1": 50})
    assert few_shot_split(examples, 8, seed=1) == few_shot_split(examples, 8, seed=1)
    assert few_shot_split(examples, 8, seed=1)[0] != few_shot_split(examples, 8, seed=2)[0]


def test_too_few_examples_of_a_class_is_an_error_naming_the_class():
    with pytest.raises(DataError, match="label '1' has 3 examples, fewer than the 4 per class asked for"):
        sample_per_class(labelled({"0": 10, "1": 3}), 4, seed=0)
    with pytest.raises(DataError, match="label '1' has 2 examples"):
        few_shot_split(labelled({"0": 10, "1": 6}), 4, seed=0)  # 4 go to train, 2 are left for dev


# --- paths in a config file ------------------------------------------------------------------


def test_paths_in_a_config_file_are_its_folders_and_set_paths_the_working_directorys(tmp_path, monkeypatch):
    folder = tmp_path / "project" / "configs"
    (folder / "models" / "mine").mkdir(parents=True)
    (folder / "models" / "mine" / "config.json").write_text("{}")
    (tmp_path / "elsewhere").mkdir()
    (folder / "run.yaml").write_text(
        "model: models/mine\nlm_head: heads/minilm\n"
        "task: {train: ../data/train.tsv, dev: data/dev.tsv, eval: /abs/test.tsv, text_fields: [sentence]}\n"
        "prompt: {template: '{sentence} It was {mask}.', verbalizer: {0: terrible, 1: great}}\n"
        "method: {name: prompt-tuning, prompt_bank: bank, demo_encoder: all-MiniLM-L6-v2}\n")
    monkeypatch.chdir(tmp_path / "elsewhere")
    cfg = load_config("../project/configs/run.yaml", ["method.init_from=runs/prompt"])
    assert cfg.model == str(folder / "models" / "mine"), "a model folder next to the config is the config's"
    assert cfg.lm_head == str(folder / "heads" / "minilm")
    assert (cfg.task.train, cfg.task.dev, cfg.task.eval) == (str(tmp_path / "project" / "data" / "train.tsv"),
                                                           str(folder / "data" / "dev.tsv"), "/abs/test.tsv")
    assert cfg.method.prompt_bank == str(folder / "bank")
    assert cfg.method.demo_encoder == "all-MiniLM-L6-v2", "a name that is no folder there stays a name"
    assert cfg.method.init_from == str(tmp_path / "elsewhere" / "runs" / "prompt"), "--set paths are the working directory's"
    cfg = load_config(folder / "run.yaml", ["model=all-MiniLM-L6-v2", "method.init_from=most_similar"])
    assert cfg.model == "all-MiniLM-L6-v2" and cfg.method.init_from == "most_similar"


def test_the_shipped_configs_find_the_shared_data_from_any_directory(tmp_path, monkeypatch, shared_data):
    from pathlib import Path

    monkeypatch.chdir(tmp_path)
    for path in sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml")):
        cfg = load_config(path)
        for data in (cfg.task.train, cfg.task.eval):
            assert data is None or Path(data).is_file(), f"{path.name}: {data} does not exist"


# --- an evaluation set carved from train ----------------------------------------------------


def test_eval_split_holds_out_a_seeded_share_of_each_label():
    examples = labelled({"0": 50, "1": 30})
    rest, held = held_out_split(examples, 0.2, seed=13)
    assert sorted(ex["label"] for ex in held) == ["0"] * 10 + ["1"] * 6, "20% of each label"
    assert len(rest) == 64 and not {id(ex) for ex in rest} & {id(ex) for ex in held}
    assert held_out_split(examples, 0.2, seed=13) == (rest, held), "the same seed carves the same set"
    assert held_out_split(examples, 0.2, seed=14)[1] != held


def write_tsv(path, n_per_class: dict[str, int]):
    rows = [f"{ex['label']}\t{ex['sentence']}" for ex in labelled(n_per_class)]
    path.write_text("label\tsentence\n" + "\n".join(rows) + "\n")
    return path


def test_eval_split_is_carved_before_dev_and_the_few_shot_sample_and_disjoint_from_both(tmp_path):
    from prompttune.recipes import load_splits

    data = write_tsv(tmp_path / "train.tsv", {"0": 40, "1": 60})
    cfg = load_config(raw=config_with(task={"train": str(data), "eval_split": 0.25, "shots": 8, "seed": 3}))
    train, dev, test = load_splits(cfg)
    assert (len(train), len(dev), len(test)) == (16, 16, 25)
    texts = [{ex["sentence"] for ex in split} for split in (train, dev, test)]
    assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2]), "train, dev and eval overlap"
    assert load_splits(cfg) == (train, dev, test), "the carve and the samples are seeded"
    no_shots = load_config(raw=config_with(task={"train": str(data), "eval_split": 0.25, "seed": 3}))
    all_train, _, same_test = load_splits(no_shots)
    assert same_test == test and len(all_train) == 75, "the carve does not depend on the few-shot sample"


@pytest.mark.parametrize("task, message", [
    ({"eval_split": 0.2, "eval": "test.tsv"}, "set only one of them"),
    ({"eval_split": 1.0}, "task.eval_split must be a fraction between 0 and 1"),
    ({"eval_split": 0}, "task.eval_split must be a fraction between 0 and 1"),
    ({"eval_split": 0.2, "train": None}, "set task.train"),
])
def test_a_bad_eval_split_is_refused_in_one_line(task, message):
    with pytest.raises(ConfigError, match=message):
        load_config(raw=config_with(task=task))


def test_the_artifact_records_the_eval_split(tmp_path, bert_dir):
    from prompttune.recipes import run_training

    data = write_tsv(tmp_path / "train.tsv", {"0": 10, "1": 10})
    cfg = load_config(raw={"model": str(bert_dir), "task": {"train": str(data), "eval_split": 0.2, "seed": 5},
                           "method": {"name": "finetune"}, "train": {"epochs": 1, "progress": False}})
    summary = run_training(cfg, tmp_path / "task", log=lambda _: None)
    recorded = json.loads((tmp_path / "task" / "config.json").read_text())["training"]["eval_split"]
    assert recorded == {"fraction": 0.2, "seed": 5, "from": str(data), "examples": 4} and summary["eval"]["n"] == 4


@pytest.mark.parametrize("value", ["max", "SUM", 1])
def test_word_score_is_sum_or_mean(value):
    assert load_config(raw=config_with(prompt={"word_score": "mean"})).prompt.word_score == "mean"
    with pytest.raises(ConfigError, match="prompt.word_score"):
        load_config(raw=config_with(prompt={"word_score": value}))


# --- labels the task does not know ---------------------------------------------------------


def test_a_data_label_missing_from_the_verbalizer_is_an_error_naming_the_label(bert_dir):
    spec = TaskSpec(method="zero-shot", model=str(bert_dir), text_fields=["sentence"], labels=["0", "1"],
                    template="{sentence} it was {mask} .", verbalizer={"0": ["bad"], "1": ["good"]})
    clf, _ = build_classifier(spec)
    clf.collate([{"sentence": "fun", "label": 1}, {"sentence": "dull", "label": "0"}])
    with pytest.raises(VerbalizerError) as err:
        clf.collate([{"sentence": "fun", "label": "1"}, {"sentence": "meh", "label": "neutral"}])
    assert "label 'neutral' appears in the data but not in the verbalizer" in str(err.value)
    assert "['0', '1']" in str(err.value)


def test_a_data_label_unknown_to_a_head_classifier_is_an_error_naming_the_label(bert_dir):
    spec = TaskSpec(method="finetune", model=str(bert_dir), text_fields=["sentence"], labels=["0", "1"])
    clf, _ = build_classifier(spec)
    with pytest.raises(DataError, match=r"label '2' is not one of the task's labels \['0', '1'\]"):
        clf.collate([{"sentence": "fun", "label": "2"}])


@pytest.mark.parametrize(("raw", "model"), [
    ({"prompt": {"template": "{sentence} It was {mask}.", "verbalizer": {0: "bad", 1: "good"}}}, "SmolLM2-135M-Instruct"),
    ({"method": {"name": "finetune"}}, "all-MiniLM-L6-v2"),
    ({"method": {"name": "p-tuning-v2", "head": True}}, "all-MiniLM-L6-v2"),
    ({"lm_head": "heads/minilm", "prompt": {"template": "{sentence} {mask}", "verbalizer": {0: "bad", 1: "good"}}},
     "all-MiniLM-L6-v2"),
    ({"task": {"text_fields": ["sentence"], "generation": True}, "prompt": {"template": "{sentence} {mask}"}},
     "SmolLM2-135M-Instruct"),
    ({"model": "my/model", "method": {"name": "finetune"}}, "my/model"),
], ids=["label words", "finetune", "p-tuning-v2 head", "fitted head", "generation", "named"])
def test_a_config_without_a_model_gets_the_one_that_reads_its_task(raw, model):
    """Label words need a model with an LM head (SmolLM2's own); a classification head or a fitted MLM
    head is read on the embedded MiniLM; a model named is kept."""
    assert load_config(raw={"task": {"text_fields": ["sentence"]}, **raw}).model == model
