"""Export a saved task's prompt as a Hugging Face PEFT adapter (`prompttune export --format peft`).

What maps to what (PEFT's adapter directory: `adapter_config.json` + `adapter_model.safetensors`
holding one tensor, `prompt_embeddings`):

- prompt-tuning, p-tuning → PEFT `PROMPT_TUNING`. A saved p-tuning task holds only its prompt
  encoder's output vectors, which is exactly a prompt-tuning prompt, so both export the same way:
  `prompt_embeddings` is `soft.vectors`, (n, d), and `num_virtual_tokens` is n. PEFT always puts
  its virtual tokens before the whole input, so this is exact only where the template renders
  every soft token first: the template starts with its `{soft}` segments, and the tokenizer adds
  no special token in front (GPT-2 and T5 add none; BERT's `[CLS]`, RoBERTa's `<s>` and Llama's
  BOS come first, which PEFT cannot express). Other tasks are refused.
- prefix-tuning, p-tuning-v2 (template + verbalizer) → PEFT `PREFIX_TUNING` with
  `prefix_projection: false` (the MLP of prefix-tuning is already folded away in the artifact).
  PEFT's `get_prompt` views `prompt_embeddings`, (P, layers·2·heads·head_dim), as
  (P, layers·2, heads, head_dim) and gives layer l the rows 2l (keys) and 2l+1 (values); that is
  the memory order of prompttune's `deep.prefix`, (P, layers, 2, heads, head_dim), so the export
  is a reshape. PEFT feeds the prefix as `past_key_values` and numbers the real tokens from P;
  prompttune's attention function gives the same outputs where positions come from an absolute
  position table (GPT-2, BERT, RoBERTa). It does not on:
    * encoder-decoder models (T5): `transformers` gives `past_key_values` only to the decoder, so
      PEFT's prefix never reaches the encoder (whose layers hold half of prompttune's prefix), and
      in the decoder T5's relative position bias treats PEFT's prefix as earlier positions where
      prompttune gives it none. Refused.
    * rotary-position models (Llama, Qwen, SmolLM2...): PEFT rotates the real tokens' queries for
      positions P, P+1, ... while prompttune keeps them at 0, 1, ...; the scores against the
      (unrotated) prefix keys differ. Caught by the check below and refused.

Every export is checked before anything is written: the adapter is loaded with
`peft.PeftModel.from_pretrained` onto a fresh copy of the task's model, and its logits on two
rendered probe examples (padded as a batch) must equal prompttune's. An adapter that would give
other outputs is never written. Head-based tasks (`method.head: true`), zero-shot (nothing
trained), finetune and prompt-finetune (all weights trained) have no PEFT prompt counterpart.

Using the adapter: load the same base model the task names (`AutoModelForCausalLM`,
`AutoModelForSeq2SeqLM`, or for masked LMs `AutoModelForMaskedLM`: PEFT's FEATURE_EXTRACTION
task type forwards to it unchanged and returns its logits), put a fitted LM head on it first if
the task has one: the export carries a copy of the task's head (`lm_head.safetensors` +
`lm_head.json`, named by `lm_head` in `prompttune_task.json`; `prompttune.lm_head.load_lm_head(base,
"EXPORT_DIR/lm_head.safetensors")`), then `PeftModel.from_pretrained`. Feed the template rendered
without its leading soft tokens (prompt tuning) or as is (prefix tuning). The export also writes
`prompttune_task.json` (template, labels, verbalizer, model), which PEFT ignores.
"""

from __future__ import annotations

import enum
import json
import tempfile
import warnings
from pathlib import Path

import torch

from . import __version__
from .artifacts import load_artifact, read_config, spec_from_config
from .backbones import DEFAULT_MODEL, load_backbone
from .devices import model_device
from .errors import ExportError, PromptTuneError
from .files import Writer, json_writer, safetensors_writer, write_together
from .lm_head import COPY_INFO, COPY_WEIGHTS, head_copy
from .methods import get_method
from .models import bind_prompts
from .outputs import claim_output, json_marked
from .templates import Soft, SpecialTokens, Text

ADAPTER_CONFIG, ADAPTER_WEIGHTS, TASK_FILE = "adapter_config.json", "adapter_model.safetensors", "prompttune_task.json"
EXPORT_FILES = (ADAPTER_WEIGHTS, ADAPTER_CONFIG, TASK_FILE, COPY_WEIGHTS, COPY_INFO)
SOFT_METHODS = ("prompt-tuning", "p-tuning")
DEEP_METHODS = ("prefix-tuning", "p-tuning-v2")
SUPPORTED = (
    "lora (template + verbalizer); prompt-tuning and p-tuning whose template puts every soft token first (on a tokenizer that adds no "
    "special token in front, e.g. GPT-2, T5), and prefix-tuning and p-tuning-v2 read through a template + "
    "verbalizer on decoder-only or encoder-only models (e.g. GPT-2, Llama, BERT, RoBERTa)"
)
TASK_TYPES = {"causal": "CAUSAL_LM", "seq2seq": "SEQ_2_SEQ_LM", "masked": "FEATURE_EXTRACTION"}
PROBES = ("the movie was very good and the acting was fun", "bad film")


def export_peft(artifact_dir: str | Path, out_dir: str | Path, *, verify: bool = True, overwrite: bool = False) -> Path:
    """Write the task saved in `artifact_dir` as a PEFT adapter directory `out_dir`; return `out_dir`.

    Raises `ExportError` (naming why) for a task PEFT cannot represent with the same outputs, and
    `ArtifactError` for a directory that is not a readable task artifact. With `verify` (the
    default) PEFT loads the adapter and must reproduce prompttune's logits on probe inputs before
    anything is written; `verify=False` skips that second model load. `out_dir` is held for the
    export (`outputs.claim_output`); an adapter already there is replaced only with `overwrite`
    (else `OutputError`). The three files are replaced together.

    Example:
        >>> export_peft("runs/gpt2-prompt", "exports/gpt2-prompt")      # doctest: +SKIP
        >>> base = AutoModelForCausalLM.from_pretrained("gpt2")           # doctest: +SKIP
        >>> model = PeftModel.from_pretrained(base, "exports/gpt2-prompt")  # doctest: +SKIP
    """
    artifact_dir, out_dir = Path(artifact_dir), Path(out_dir)
    if out_dir.resolve() == artifact_dir.resolve():
        raise ExportError(f"{str(out_dir)!r} is the task artifact itself; write the PEFT adapter to a directory of its own")
    config = read_config(artifact_dir)
    spec = spec_from_config(config, artifact_dir)
    _check_method(spec)
    with claim_output(out_dir, owned=EXPORT_FILES, what="a PEFT adapter", overwrite=overwrite,
                      is_ours=lambda d: json_marked(d / TASK_FILE, "exported_by")):
        _export(artifact_dir, out_dir, spec, verify)
    return out_dir


def _export(artifact_dir: Path, out_dir: Path, spec, verify: bool) -> None:
    """Convert, check with PEFT (in a temporary directory), then write `out_dir`'s files together."""
    clf, config = load_artifact(artifact_dir)
    kind = config["backbone"]["kind"]
    if spec.method == "lora":
        peft_config, weights = _lora_export(artifact_dir, clf, spec, kind)
        n_virtual = 0
    else:
        if spec.method in SOFT_METHODS:
            peft_config, prompt, n_virtual = _soft_prompt_export(clf, spec, kind)
        else:
            peft_config, prompt, n_virtual = _prefix_export(clf, spec, kind)
        weights = {"prompt_embeddings": prompt}
    adapter = _adapter_files(_plain(peft_config.to_dict()), weights)
    max_diff = None
    if verify:
        with tempfile.TemporaryDirectory(prefix="prompttune-peft-") as tmp:
            write_together(tmp, adapter)
            max_diff = _check_with_peft(clf, spec, kind, Path(tmp), n_virtual)
    head = head_copy(spec.lm_head) if spec.lm_head is not None else {}
    write_together(out_dir, {**head, **adapter, TASK_FILE: json_writer({
        "exported_by": f"prompttune {__version__}",
        "source_artifact": str(artifact_dir),
        "method": spec.method,
        "model": spec.model,
        "model_kind": kind,
        "lm_head": COPY_WEIGHTS if head else None,
        "template": spec.template,
        "labels": spec.labels,
        "verbalizer": spec.verbalizer,
        "peft_input": (
            f"the template rendered without its {n_virtual} leading soft tokens: PEFT prepends them as virtual tokens"
            if spec.method in SOFT_METHODS else "the template rendered as prompttune renders it (ids, with the task's LM head)"
        ),
        "verified_max_abs_logit_difference": max_diff,
    })}, replaces=[] if head else [COPY_WEIGHTS, COPY_INFO])


def _check_method(spec) -> None:
    if not isinstance(spec.method, str):
        raise ExportError(f"methods {spec.method} are combined; PEFT loads one kind of adapter at a time, so a combined "
                          f"task cannot be exported as one; exportable: {SUPPORTED}")
    if spec.method not in SOFT_METHODS + DEEP_METHODS + ("lora",):
        why = {
            "zero-shot": "it trains nothing: use the base model as it is",
            "finetune": "it trains all of the model's weights: save the whole model instead",
            "prompt-finetune": "it trains all of the model's weights: save the whole model instead",
        }.get(spec.method, "PEFT has no counterpart of this method")
        raise ExportError(f"method {spec.method!r} has no PEFT prompt to export ({why}); exportable: {SUPPORTED}")
    if get_method(spec.method).uses_head(spec.method_options()):
        raise ExportError(
            f"task method {spec.method!r} uses a classification head (method.head: true), which the PEFT export does "
            f"not cover; exportable: {SUPPORTED}"
        )


def _soft_prompt_export(clf, spec, kind: str):
    from peft import PromptTuningConfig

    seen_other = None
    for seg in clf.template.segments:
        if isinstance(seg, Soft):
            if seen_other is not None:
                raise ExportError(
                    f"template {spec.template!r} puts soft tokens after {seen_other}, but PEFT's prompt tuning always "
                    "puts its virtual tokens before the whole input; only a template that begins with all its {soft} "
                    "segments can be exported"
                )
        elif not (isinstance(seg, Text) and not seg.text.strip()):
            seen_other = f"the text {seg.text!r}" if isinstance(seg, Text) else f"{{{getattr(seg, 'name', 'mask')}}}"
    lead = SpecialTokens.of(clf.tokenizer).prefix
    if lead:
        tokens = clf.tokenizer.convert_ids_to_tokens(list(lead))
        raise ExportError(
            f"the tokenizer of model {spec.model!r} puts {tokens} in front of every input, so prompttune's soft tokens come "
            f"after {tokens[0]!r}, while PEFT's prompt tuning puts its virtual tokens before the whole input, special "
            "tokens included: PEFT cannot represent this prompt (prefix-tuning or p-tuning-v2 tasks on this model export)"
        )
    vectors = clf.soft.vectors.detach().float()
    n, dim = vectors.shape
    model_cfg = clf.model.config
    peft_config = PromptTuningConfig(
        task_type=TASK_TYPES[kind],
        num_virtual_tokens=n,
        token_dim=dim,
        num_transformer_submodules=1,  # the encoder's input only, also on T5
        num_layers=_config_value(model_cfg, "num_hidden_layers", "num_layers", "n_layer"),
        num_attention_heads=_config_value(model_cfg, "num_attention_heads", "num_heads", "n_head"),
        base_model_name_or_path=_base_model_name(spec.model),
        inference_mode=True,
    )
    return peft_config, vectors, n


def _prefix_export(clf, spec, kind: str):
    from peft import PrefixTuningConfig

    if kind == "seq2seq":
        raise ExportError(
            f"{spec.method!r} on the encoder-decoder model {spec.model!r} cannot be exported: PEFT passes prefixes as "
            "past_key_values, which transformers gives only to the decoder, so half of this prefix (the encoder "
            "layers') would be dropped, and T5's relative position bias would place PEFT's decoder prefix at earlier "
            "positions where prompttune gives it no position bias; PEFT's outputs would differ"
        )
    deep = clf.deep
    prefix = deep.prefix.detach().float()  # (P, layers, 2, heads, head_dim)
    length, layers, _, heads, head_dim = prefix.shape
    if length == 0:
        raise ExportError("the task's prefix has length 0 (method.prompt_length: 0): there is no prompt to export")
    peft_config = PrefixTuningConfig(
        task_type=TASK_TYPES[kind],
        num_virtual_tokens=length,
        num_layers=layers,
        token_dim=heads * head_dim,
        encoder_hidden_size=heads * head_dim,
        num_attention_heads=heads,
        num_transformer_submodules=1,
        prefix_projection=False,
        base_model_name_or_path=_base_model_name(spec.model),
        inference_mode=True,
    )
    # (P, layers, 2, heads, head_dim) is PEFT's (P, layers*2, heads, head_dim) layout: flatten each token.
    return peft_config, prefix.reshape(length, layers * 2 * heads * head_dim), 0


def _lora_export(artifact_dir: Path, clf, spec, kind: str):
    """LoRA's A/B matrices under PEFT's names (`base_model.model.<module>.lora_A.weight`)."""
    from peft import LoraConfig
    from safetensors.torch import load_file
    from .artifacts import WEIGHTS
    from .methods.lora import default_targets, targets_are_conv1d

    options = spec.method_options()
    saved = load_file(str(artifact_dir / WEIGHTS))  # the unmerged matrices, whatever `merge` says
    weights = {}
    for name, tensor in saved.items():
        if "lora_" not in name:
            raise ExportError(f"the artifact holds {name!r} besides LoRA's matrices; only pure LoRA tasks export")
        weights["base_model.model." + name.removeprefix("model.").replace(".default.", ".")] = tensor
    targets = options.target_modules or default_targets(clf.model)
    peft_config = LoraConfig(task_type=TASK_TYPES[kind], r=options.lora_rank, lora_alpha=options.lora_alpha,
                             lora_dropout=options.lora_dropout, target_modules=targets, bias="none",
                             fan_in_fan_out=targets_are_conv1d(clf.model, targets), base_model_name_or_path=_base_model_name(spec.model),
                             inference_mode=True)
    return peft_config, weights


def _probe_batch(clf) -> tuple[torch.Tensor, torch.Tensor, list[int] | None]:
    """(ids, attention mask, decoder start ids) of the probe texts as the task reads them: a label-word
    task's scored input, a generation task's prompt (chat template included, right-padded)."""
    examples = [{f: text for f in clf.template.fields} for text in PROBES]
    if getattr(clf, "generates", False):
        from .generation import prompt_ids
        from .scoring import pad

        tok = clf.tokenizer
        ids, attn = pad([prompt_ids(clf, ex) for ex in examples], tok.pad_token_id if tok.pad_token_id is not None else clf.eos)
        return ids, attn, [getattr(clf.model.config, "decoder_start_token_id", None) or 0]  # seq2seq: the decoder's start
    batch = clf.scorer.encode(examples)
    key = "ids" if "ids" in batch else min(k for k in batch if k.startswith("ids"))
    return batch[key], batch[key.replace("ids", "attn")], getattr(clf.scorer, "lead", None)  # seq2seq scorers have one


def _check_with_peft(clf, spec, kind: str, adapter_dir: Path, n_virtual: int) -> float:
    """Load the adapter with PEFT on a fresh copy of the model; its logits must equal prompttune's."""
    import peft
    from peft import PeftModel

    device = model_device(clf.model)
    ids, attn, lead = (t.to(device) if isinstance(t, torch.Tensor) else t for t in _probe_batch(clf))
    extra = {}
    if kind == "seq2seq":
        extra["decoder_input_ids"] = torch.tensor([lead], device=device).expand(ids.shape[0], -1)
    with torch.no_grad():
        bind_prompts(clf)
        ours = clf.model(input_ids=ids, attention_mask=attn, **extra).logits
    try:
        # The same model as the task's: in its dtype, on its device, quantized as it is (a QLoRA task's
        # adapter is checked on its 4-bit base, where PEFT users load it too).
        from .quantization import quantization_of

        quantization = quantization_of(clf.model)
        base = load_backbone(spec.model, kind=kind, lm_head=spec.lm_head, dtype=clf.model.dtype, quantization=quantization,
                             device=device).model
        if quantization == "none":
            base.to(device)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PEFT and transformers deprecation notices
            peft_model = PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=False).eval()
            with torch.no_grad():
                theirs = peft_model(input_ids=ids[:, n_virtual:], attention_mask=attn[:, n_virtual:], **extra).logits
    except PromptTuneError:
        raise
    except Exception as e:  # PEFT or transformers refusing the adapter: report it, write nothing
        raise ExportError(f"PEFT {peft.__version__} could not load or run the exported adapter on {spec.model!r}: "
                          f"{type(e).__name__}: {e}") from e
    if kind != "seq2seq":  # compare the real tokens' logits (PEFT prompt tuning also returns the virtual ones)
        real = attn[:, n_virtual:].bool()
        ours, theirs = ours[:, n_virtual:][real], theirs[:, n_virtual:][real]
    if ours.shape != theirs.shape:
        raise ExportError(f"PEFT returned logits of shape {tuple(theirs.shape)}, prompttune {tuple(ours.shape)}; "
                          "the adapter would not reproduce the task")
    ours, theirs = ours.float(), theirs.float()
    diff = float((ours - theirs).abs().max())
    scale = float(ours.abs().max())
    tol = (1e-4 if clf.model.dtype in (torch.float32, torch.float64) else 2e-2) * (1 + scale)
    if not diff <= tol:
        raise ExportError(
            f"PEFT's outputs for this {spec.method!r} task on {spec.model!r} differ from prompttune's by up to {diff:.3g} "
            f"(tolerance {tol:.2g}); refusing to write an adapter that would change the task's predictions"
        )
    return diff


def _adapter_files(adapter_config: dict, weights: dict[str, torch.Tensor]) -> dict[str, Writer]:
    """PEFT's two adapter files, weights first."""
    return {ADAPTER_WEIGHTS: safetensors_writer(weights, {"format": "pt"}), ADAPTER_CONFIG: json_writer(adapter_config)}


def _plain(config: dict) -> dict:
    """PEFT's config dict as JSON values (its enums as their strings, sets as sorted lists)."""
    out = {}
    for key, value in config.items():
        if isinstance(value, enum.Enum):
            value = value.value
        elif isinstance(value, set):
            value = sorted(value)
        out[key] = value
    json.dumps(out)  # fail here, not halfway through a write
    return out


def _config_value(config, *names):
    return next((getattr(config, n) for n in names if getattr(config, n, None) is not None), None)


def _base_model_name(name: str) -> str:
    # prompttune's names for its embedded default are not hub ids.
    return "sentence-transformers/all-MiniLM-L6-v2" if name in (DEFAULT_MODEL, "default") else name

