"""Deep prompts (prefix-tuning, p-tuning-v2) and soft prompts under the conditions where Hugging
Face PEFT's prefix tuning breaks:

- huggingface/peft #2821 ('DynamicCache' object has no attribute 'key_cache') and #1962 (tuple
  caches deprecated): our prefix never enters the cache, so any cache class works;
- #2131 (prompt tuning / p-tuning / prefix tuning fail in `generate`: mask size mismatch):
  batched generation with padding, with and without the cache;
- #2191 (prefix tuning cannot be combined with gradient checkpointing);
- and fp32 / bf16.

Plus the correctness of the injection itself: a prefix of length 0 is the bare model exactly, a
prefix changes the outputs, and on GPT-2 a prefix gives exactly what the original implementation
(Li & Liang: the prefix fed as past key/values) computes.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoModelForSeq2SeqLM

from prompttune import TaskSpec, build_classifier
from prompttune.deep_prompts import DeepPrompt, attention_sites, cache_inputs, prefix_cache
from prompttune.generation import generate

AUTO = {"bert_dir": AutoModelForMaskedLM, "roberta_dir": AutoModelForMaskedLM, "gpt2_dir": AutoModelForCausalLM,
        "t5_dir": AutoModelForSeq2SeqLM}
MODELS = list(AUTO)


def load(model_fixture, request):
    return AUTO[model_fixture].from_pretrained(request.getfixturevalue(model_fixture)).eval()


def inputs(model, padded: bool = True) -> dict:
    torch.manual_seed(0)
    ids = torch.randint(5, 200, (3, 9))
    attn = torch.ones_like(ids)
    if padded:
        attn[1, 6:] = 0
        attn[2, 4:] = 0
    kw = {"input_ids": ids, "attention_mask": attn}
    if model.config.is_encoder_decoder:
        kw["decoder_input_ids"] = ids[:, :4]
    return kw


def random_prefix(deep: DeepPrompt) -> None:
    with torch.no_grad():
        deep.prefix.normal_(0, 1)


@pytest.mark.parametrize("model", MODELS)
def test_a_prefix_of_length_zero_is_the_bare_model_exactly(model, request):
    m = load(model, request)
    kw = inputs(m)
    with torch.no_grad():
        bare = m(**kw).logits
        deep = DeepPrompt(m, 0)
        deep.bind()
        assert torch.equal(m(**kw).logits, bare), "a zero-length prefix changed the outputs"


@pytest.mark.parametrize("model", MODELS)
def test_a_prefix_changes_the_outputs_and_unbinding_restores_them(model, request):
    m = load(model, request)
    kw = inputs(m)
    with torch.no_grad():
        bare = m(**kw).logits
        deep = DeepPrompt(m, 4)
        random_prefix(deep)
        deep.bind()
        prefixed = m(**kw).logits
        assert not torch.allclose(prefixed, bare), "a random prefix left the outputs unchanged"
        from prompttune.deep_prompts import unbind

        unbind(m, deep.sites)
        assert torch.equal(m(**kw).logits, bare), "unbinding the prefix did not restore the bare model"


def test_gpt2_prefix_equals_the_prefix_fed_as_past_key_values(gpt2_dir):
    """Li & Liang's (and PEFT's) formulation: the prefix is a key/value cache the real tokens follow."""
    m = AutoModelForCausalLM.from_pretrained(gpt2_dir).eval()
    kw = inputs(m)
    deep = DeepPrompt(m, 4)
    random_prefix(deep)
    with torch.no_grad():
        deep.bind()
        ours = m(**kw).logits
        from prompttune.deep_prompts import unbind

        unbind(m, deep.sites)
        table = deep.table()
        layers = [(table[:, s, 0].transpose(0, 1)[None], table[:, s, 1].transpose(0, 1)[None]) for s in range(len(deep.sites))]
        mask = torch.cat([torch.ones(3, 4, dtype=torch.long), kw["attention_mask"]], dim=1)
        reference = m(input_ids=kw["input_ids"], attention_mask=mask, **cache_inputs(m, prefix_cache(m, layers, 3))).logits
    real = kw["attention_mask"].bool()
    torch.testing.assert_close(ours[real], reference[real], rtol=0, atol=1e-5)


@pytest.mark.parametrize("model", MODELS)
def test_the_eager_attention_path_matches_sdpa(model, request):
    m = load(model, request)
    kw = inputs(m)
    deep = DeepPrompt(m, 3)
    random_prefix(deep)
    with torch.no_grad():
        deep.bind()
        sdpa = m(**kw).logits
    eager = AUTO[model].from_pretrained(request.getfixturevalue(model), attn_implementation="eager").eval()
    deep_eager = DeepPrompt(eager, 3)
    with torch.no_grad():
        deep_eager.prefix.copy_(deep.prefix)
        deep_eager.bind()
        out = eager(**kw).logits
    real = kw["attention_mask"].bool()
    if m.config.is_encoder_decoder:
        real = torch.ones(out.shape[:2], dtype=torch.bool)
    torch.testing.assert_close(out[real], sdpa[real], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("model", MODELS)
def test_only_the_prefix_gets_gradients_and_the_cache_holds_only_real_tokens(model, request):
    m = load(model, request)
    for p in m.parameters():
        p.requires_grad_(False)
    kw = inputs(m)
    deep = DeepPrompt(m, 3)
    deep.bind()
    out = m(**kw, use_cache=True)
    out.logits.sum().backward()
    assert deep.prefix.grad is not None and deep.prefix.grad.abs().sum() > 0
    assert all(p.grad is None for p in m.parameters())
    # the returned cache, by whichever name this transformers gives it ("cache" since 5.24), without the BC warning
    returned = next((v for k, v in out.items() if k in ("cache", "past_key_values")), None)
    if returned is not None:  # peft #2821 / #1962: the prefix is not in the cache
        seen = returned.get_seq_length()
        expected = kw["decoder_input_ids" if m.config.is_encoder_decoder else "input_ids"].shape[1]
        assert seen == expected, f"the cache holds {seen} positions; only the {expected} real ones belong there"


# --- the PEFT failure cases, through the task API ------------------------------------------

EXAMPLES = [{"text": "great fun", "label": "1"}, {"text": "a terrible , boring movie that never ends .", "label": "0"},
            {"text": "good", "label": "1"}]


def task(model_dir, method: str, **options) -> torch.nn.Module:
    template = "{soft:3} {text} it was {mask}" if method in ("prompt-tuning", "p-tuning") else "{text} it was {mask}"
    spec = TaskSpec(max_length=64, method=method, model=str(model_dir), text_fields=["text"], labels=["0", "1"], template=template,
                    verbalizer={"0": ["bad"], "1": ["good"]}, options={"prompt_length": 3, **options})
    clf, _ = build_classifier(spec)
    with torch.no_grad():  # a prompt far from its initialisation, so any misplacement would show
        for p in clf.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p))
    return clf


GENERATING = ["gpt2_dir", "t5_dir"]
PROMPTS = ["prompt-tuning", "prefix-tuning", "p-tuning-v2"]


@pytest.mark.parametrize("model", GENERATING)
@pytest.mark.parametrize("method", PROMPTS)
def test_batched_generation_with_padding_equals_one_at_a_time(model, method, request):
    """peft #2131: prompts in `generate` with a padded batch."""
    clf = task(request.getfixturevalue(model), method)
    batched = generate(clf, EXAMPLES, max_new_tokens=6, batch_size=3)
    single = [generate(clf, [ex], max_new_tokens=6)[0] for ex in EXAMPLES]
    assert batched == single, f"padding changed the generations: {batched} vs {single}"


@pytest.mark.parametrize("model", GENERATING)
@pytest.mark.parametrize("method", PROMPTS)
def test_generation_with_the_cache_equals_generation_without(model, method, request):
    clf = task(request.getfixturevalue(model), method)
    cached = generate(clf, EXAMPLES, max_new_tokens=6, use_cache=True)
    uncached = generate(clf, EXAMPLES, max_new_tokens=6, use_cache=False)
    assert cached == uncached, f"the cache changed the generations: {cached} vs {uncached}"


@pytest.mark.filterwarnings("ignore:`gradient_checkpointing_(enable|disable)` is deprecated:FutureWarning")
@pytest.mark.parametrize("model", ["bert_dir", "gpt2_dir", "t5_dir"])
@pytest.mark.parametrize("method", PROMPTS + ["p-tuning"])
def test_gradient_checkpointing_gives_the_same_gradients(model, method, request):
    """peft #2191: prefix tuning with gradient checkpointing."""
    model_dir = request.getfixturevalue(model)  # before seeding: building a tiny model draws random numbers
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        clf = task(model_dir, method)
        if checkpointing:
            clf.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        clf.train()
        clf.model.eval()  # dropout off, so both runs compute the same thing
        batch = clf.collate(EXAMPLES)
        torch.nn.functional.cross_entropy(clf(batch), batch["labels"]).backward()
        grads.append({n: p.grad.clone() for n, p in clf.named_parameters() if p.requires_grad})
        if checkpointing:
            clf.model.gradient_checkpointing_disable()
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        diff = (grads[1][name] - grads[0][name]).abs().max().item()
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-6,
                                   msg=f"{name} differs under checkpointing by up to {diff:.3g}")


@pytest.mark.parametrize("model", ["bert_dir", "gpt2_dir", "t5_dir"])
@pytest.mark.parametrize("method", PROMPTS + ["p-tuning"])
def test_bf16_backbone_trains_fp32_prompts(model, method, request):
    clf = task(request.getfixturevalue(model), method)
    batch = clf.collate(EXAMPLES)
    fp32 = clf(batch).detach()
    clf.model.to(torch.bfloat16)
    try:
        scores = clf(batch)
        torch.nn.functional.cross_entropy(scores.float(), batch["labels"]).backward()
        prompt = [p for p in clf.parameters() if p.requires_grad]
        assert all(p.dtype == torch.float32 for p in prompt), "prompt parameters should stay in fp32"
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in prompt), "bf16: missing or non-finite gradients"
        torch.testing.assert_close(scores.float(), fp32, rtol=0.1, atol=0.15, msg="bf16 scores are far from fp32 ones")
    finally:
        clf.model.to(torch.float32)


def test_attention_sites_are_the_self_attention_layers(t5_dir, gpt2_dir, bert_dir):
    t5 = AutoModelForSeq2SeqLM.from_pretrained(t5_dir)
    names = [s.name for s in attention_sites(t5)]
    assert names == [f"encoder.block.{i}.layer.0.SelfAttention" for i in range(2)] + \
        [f"decoder.block.{i}.layer.0.SelfAttention" for i in range(2)], names
    assert len(attention_sites(AutoModelForCausalLM.from_pretrained(gpt2_dir))) == 2
    assert all(s.name.endswith("attention.self") for s in attention_sites(AutoModelForMaskedLM.from_pretrained(bert_dir)))


def test_generation_refuses_a_masked_lm(bert_dir):
    from prompttune.errors import ModelError

    with pytest.raises(ModelError, match="masked LM: it fills masks but does not generate"):
        generate(task(bert_dir, "prefix-tuning"), EXAMPLES)


def test_tasks_sharing_one_backbone_each_see_only_their_own_prompt(gpt2_dir):
    """Serving many tasks on one frozen model: a prompt bound by one task never leaks into another."""
    from prompttune import load_backbone
    from prompttune.evaluation import predict_scores

    def build(method, backbone=None):
        template = "{soft:3} {text} it was {mask}" if method == "prompt-tuning" else "{text} it was {mask}"
        s = TaskSpec(max_length=64, method=method, model=str(gpt2_dir), text_fields=["text"], labels=["0", "1"], template=template,
                     verbalizer={"0": ["bad"], "1": ["good"]}, options={"prompt_length": 3})
        clf, _ = build_classifier(s, backbone)
        with torch.no_grad():
            for p in clf.parameters():
                if p.requires_grad:
                    p.add_(torch.randn_like(p))
        return clf

    alone = {m: predict_scores(build(m), EXAMPLES) for m in ("zero-shot", "prefix-tuning", "prompt-tuning")}
    torch.manual_seed(0)
    shared = load_backbone(str(gpt2_dir))
    tasks = {m: build(m, shared) for m in ("prefix-tuning", "prompt-tuning", "zero-shot")}
    for m in ["prefix-tuning", "zero-shot", "prompt-tuning", "zero-shot", "prefix-tuning"]:
        got = predict_scores(tasks[m], EXAMPLES)
        if m == "zero-shot":
            torch.testing.assert_close(got, alone[m], rtol=0, atol=1e-6, msg="another task's prompt leaked into zero-shot")
        else:
            assert not torch.allclose(got, alone["zero-shot"]), f"{m}'s prompt was not applied on the shared backbone"


# --- the work every layer shares is done once per forward, and never reused where it does not apply ----


def count_widened_masks(monkeypatch) -> list:
    from prompttune.deep_prompts import BoundPrefix

    calls, original = [], BoundPrefix._widen

    def counted(self, *args):
        calls.append(args)
        return original(self, *args)

    monkeypatch.setattr(BoundPrefix, "_widen", counted)
    return calls


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("padded", [True, False])
def test_the_widened_mask_is_built_once_per_forward_not_once_per_layer(model, padded, request, monkeypatch):
    m = load(model, request)
    DeepPrompt(m, 3).bind()
    calls = count_widened_masks(monkeypatch)
    with torch.no_grad():
        m(**inputs(m, padded))
    stacks = 2 if m.config.is_encoder_decoder else 1  # T5: the encoder's mask, then the decoder's
    sites = len(attention_sites(m))
    assert sites > stacks
    least = 0 if model in ("bert_dir", "roberta_dir") and not padded else 1  # unpadded BERT needs no mask at all
    assert least <= len(calls) <= stacks, f"{len(calls)} masks built for one forward over {sites} layers"


def test_a_shared_result_is_remade_for_another_tensor_or_an_in_place_change():
    from prompttune.deep_prompts import BoundPrefix

    bound, made = BoundPrefix([], 2), []

    def make():
        made.append(1)
        return torch.zeros(1)

    mask = torch.ones(2, 1, 3, 3, dtype=torch.bool)
    first = bound.shared(("mask",), mask, make)
    assert bound.shared(("mask",), mask, make) is first and len(made) == 1, "the same mask was not reused"
    assert bound.shared(("mask",), mask.clone(), make) is not first, "another tensor reused a mask made for the first"
    mask[0, 0, 0, 0] = False
    assert bound.shared(("mask",), mask, make) is not first, "a mask changed in place reused what was made before"
    assert bound.shared(("mask", 2), None, make) is not bound.shared(("mask", 3), None, make), "keys were mixed up"


@pytest.mark.parametrize("model", MODELS)
def test_one_bind_gives_each_batch_exactly_what_a_fresh_bind_gives(model, request):
    """Batches of other padding, another size and length, and no padding, all after one bind."""
    m = load(model, request)
    deep = DeepPrompt(m, 3)
    random_prefix(deep)
    kw = inputs(m)
    other = {**kw, "attention_mask": kw["attention_mask"].flip(0)}
    shorter = {k: v[:2, :7] if k != "decoder_input_ids" else v[:2] for k, v in kw.items()}
    batches = [kw, other, shorter, inputs(m, padded=False), kw]
    with torch.no_grad():
        deep.bind()
        once = [m(**b).logits for b in batches]
        fresh = []
        for b in batches:
            deep.bind()
            fresh.append(m(**b).logits)
    for i, (a, b) in enumerate(zip(once, fresh)):
        assert torch.equal(a, b), f"batch {i} after one bind differs from a fresh bind by {(a - b).abs().max():.3g}"


def test_row_groups_bound_again_never_reuse_the_last_groups_mask(gpt2_dir):
    from prompttune.deep_prompts import KeyValuePrefix

    m = AutoModelForCausalLM.from_pretrained(gpt2_dir).eval()
    a, b = DeepPrompt(m, 3), DeepPrompt(m, 2)
    random_prefix(a), random_prefix(b)
    kw = inputs(m)
    with torch.no_grad():
        alone = {}
        for name, deep in (("a", a), ("b", b)):
            deep.bind()
            alone[name] = m(**kw).logits
        for assignment in (("a", "b", "a"), ("b", "a", "b"), ("b", "b", "a")):
            groups = [(part, torch.tensor([i for i, n in enumerate(assignment) if n == name]))
                      for name, part in (("a", a), ("b", b)) if name in assignment]
            KeyValuePrefix.bind_rows(m, groups)
            mixed = m(**kw).logits
            for row, name in enumerate(assignment):
                real = kw["attention_mask"][row].bool()
                torch.testing.assert_close(mixed[row][real], alone[name][row][real], rtol=0, atol=1e-5,
                                           msg=lambda msg: f"rows {assignment}: row {row} is not task {name}'s: {msg}")
