"""Generation: text tasks trained with the LM loss, and `generate` with a task's prompts in place.

A generation task is a template whose `{mask}` is where the output text goes, e.g.
`{table} Summary: {mask}` (prefix-tuning's table-to-text setting, Li & Liang 2021). Causal LMs
read the text before `{mask}` and learn to continue it with the target; seq2seq LMs (T5) read the
whole input with the mask as a sentinel and learn to emit the target from the decoder. The loss
is the mean cross-entropy of the target's tokens (and its end-of-sequence token), nothing else.

Instruction data (FLAN's instruction / input / output rows, chat `messages` rows) is a
generation task too. On a model with a chat template (`prompt.chat_template`, default: when the
tokenizer has one) the template's text before `{mask}` is the user's turn of a conversation
rendered by the chat template (`chat`), and the target is the assistant's reply and its end-of-turn
token. The loss is response-only by default: the prompt's tokens carry no loss (label -100) and
only the reply is learned; `response_only_loss: false` scores the prompt's tokens too (causal LMs;
soft-token positions and padding never carry a loss).

`generate` renders the same prompt, binds the task's soft tokens and deep prefixes, and calls
`transformers`' `generate`. Batches are left-padded for decoder-only models, so every row's
continuation starts right after its own last token; the key/value cache holds only real tokens
(deep prompts enter inside the attention call, see `deep_prompts`), so `generate`'s caching and
padding logic is untouched. Beam search needs nothing more: a task binds its parts for every row
of whatever batch comes, and `generate` expands the batch by the number of beams.

`Decoding` says how: greedy or beams, how many new tokens, and stop strings, whose text is cut
before the first one found (`cut_at_stop`, shared with the server's completions).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .backbones import Backbone
from .data import HISTORY
from .devices import model_device
from .errors import ConfigError, DataError, ModelError
from .models import PromptClassifier, TaskModule, bind_prompts
from .progress import bar_off
from .scoring import mask_leading_space, mask_slot, pad
from .templates import SpecialTokens, Template, encode_example, literal_ids


class TextGenerator(TaskModule):
    """A template task whose `{mask}` is filled with free text (the example's "label" is the target).

    `forward(batch)` returns the LM loss of the targets, a scalar; the trainer minimises it.

    Example:
        >>> gen = TextGenerator(load_backbone("gpt2"), parse_template("{table} Summary: {mask}"))
        >>> gen(gen.collate([{"table": "name: Aromi | food: Italian", "label": "Aromi serves Italian food."}]))
        tensor(5.93, grad_fn=...)
    """

    generates = True
    labels: tuple[str, ...] = ()

    def __init__(self, backbone: Backbone, template: Template, max_length: int = 256, *, chat: bool = False,
                 response_only_loss: bool = True):
        super().__init__()
        if backbone.kind == "masked":
            raise ModelError(f"{backbone.name!r} is a masked LM: it fills masks but does not generate; use a causal or seq2seq model")
        template.require_mask()
        self.model, self.kind, self.tokenizer, self.template = backbone.model, backbone.kind, backbone.tokenizer, template
        self.max_length = max_length
        self.specials = SpecialTokens.of(self.tokenizer)
        self.soft_base = self.model.get_input_embeddings().num_embeddings
        self.slot = mask_slot("seq2seq", self.tokenizer)[0]  # what a seq2seq prompt holds at {mask}
        self.eos = self.tokenizer.eos_token_id
        if chat and self.kind == "seq2seq":  # its encoder reads the task's template; a conversation would be dropped
            raise ConfigError(f"prompt.chat_template is true, but {backbone.name!r} is an encoder-decoder model: a chat "
                              "template renders a causal LM's prompt; set prompt.chat_template to auto or false")
        self.chat = require_chat_format(backbone) if chat else None
        """The chat template the prompt is rendered in (`chat.ChatFormat`), or None: the task's template alone."""
        self.stop_ids = tuple(t for t in self.chat.stop_ids() if t != self.eos) if self.chat is not None else ()
        """End-of-turn ids besides the end-of-sequence token: generation ends at them too."""
        if not response_only_loss and self.kind == "seq2seq":
            raise ConfigError(f"{backbone.name!r} is an encoder-decoder model: its encoder reads the prompt, so only the "
                              "response can carry a loss; leave task.response_only_loss true")
        self.response_only_loss = response_only_loss
        self.soft, self.deep = None, None

    def head_parameters(self) -> list[nn.Parameter]:
        return []

    def collate(self, examples: list[dict]) -> dict:
        """Token ids, attention mask and LM targets of a batch: `ids`, `attn` (B, T) and `target`, the
        label of each position (-100: no loss). Causal LMs read prompt + target as one sequence,
        right-padded; seq2seq LMs read the prompt in the encoder and the target in the decoder."""
        prompts, targets = map(list, zip(*(prompt_and_target(self, ex) for ex in examples)))
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos
        if self.kind == "seq2seq":
            ids, attn = pad(prompts, pad_id)
            target, valid = pad(targets, pad_id)
            return {"ids": ids, "attn": attn, "target": target.masked_fill(valid == 0, -100)}
        seqs = [p + t for p, t in zip(prompts, targets)]
        ids, attn = pad(seqs, pad_id)
        if self.response_only_loss:  # only the target's tokens are scored
            target = torch.full_like(ids, -100)
            for row, (p, t) in enumerate(zip(prompts, targets)):
                target[row, len(p) : len(p) + len(t)] = torch.tensor(t)
        else:  # every real token but the soft ones (they have no vocabulary id to predict)
            target = ids.masked_fill((attn == 0) | (ids >= self.soft_base), -100)
        return {"ids": ids, "attn": attn, "target": target}

    def forward(self, batch: dict) -> torch.Tensor:
        """The mean cross-entropy of the targets' tokens, computed in float32 whatever the model's dtype."""
        bind_prompts(self)
        if self.kind == "seq2seq":  # transformers' seq2seq models take the loss in the logits' dtype: not here
            decoder_ids = self.model.prepare_decoder_input_ids_from_labels(labels=batch["target"])
            logits = self.model(input_ids=batch["ids"], attention_mask=batch["attn"], decoder_input_ids=decoder_ids).logits
            return F.cross_entropy(logits.float().flatten(0, 1), batch["target"].flatten(), ignore_index=-100)
        # Causal LMs: transformers' ForCausalLMLoss shifts the targets and upcasts the logits to float32.
        return self.model(input_ids=batch["ids"], attention_mask=batch["attn"], labels=batch["target"]).loss

    def loss_terms(self, batch: dict) -> int:
        """How many target tokens `forward(batch)`'s loss is the mean of: those not -100, less the first
        position for a causal LM (it predicts each token from those before it, so the first is never a
        target; transformers' causal LM loss shifts the labels the same way). The trainer weights each
        process's share of a batch by it (`training.train`)."""
        target = batch["target"] if self.kind == "seq2seq" else batch["target"][:, 1:]
        return int((target != -100).sum())


def prompt_ids(task: nn.Module, example: dict, *, max_length: int | None = None) -> list[int]:
    """The ids a generation starts from: causal LMs get the text before `{mask}` (all of it
    without a mask); seq2seq LMs get the whole input with the mask as the first sentinel. With a
    chat template (`task.chat`), that text is the user's last turn of the conversation, after the
    example's earlier turns (`data.HISTORY`), and the assistant's turn is opened after it.

    `max_length` (default: the task's) bounds the prompt's tokens; its fields are truncated to fit.
    Raises `DataError` for a conversation of several turns on a task without a chat template, or
    one whose earlier turns alone take `max_length` tokens."""
    r = getattr(task, "scorer", task)  # a PromptClassifier's scorer holds the same rendering settings
    chat, history = getattr(task, "chat", None), example.get(HISTORY) or []
    if history and chat is None:
        raise DataError("a conversation with turns before its last user message needs a model with a chat template "
                        "and prompt.chat_template on; this task renders its own template only")
    limit = room = max_length or r.max_length
    if chat is not None:
        room -= chat.wrapper_length(history)
        if room < 1:
            raise DataError(f"the chat template's own tokens and the conversation's earlier turns take {limit - room} "
                            f"tokens, more than the {limit} its prompt may take (train.max_length {r.max_length}); "
                            "shorten the conversation or raise train.max_length")
    seq2seq = task.kind == "seq2seq"
    enc = encode_example(task.template, task.tokenizer, example, mask_fill=[r.slot] if seq2seq else [],
                         max_length=room, specials=r.specials, soft_base=r.soft_base)
    if seq2seq:
        return enc.ids
    if chat is not None:  # the turn's content: the template's ids without the tokenizer's own wrapping
        return chat.prompt_ids(history, enc.ids[len(r.specials.prefix) : enc.mask_start])
    return enc.ids[: enc.mask_start] if enc.mask_start >= 0 else enc.ids[: len(enc.ids) - len(r.specials.suffix)]


def target_ids(task, example: dict) -> list[int]:
    """The ids a generation task learns to write after its prompt: the target text (task.label_field,
    read literally) and what ends it: the chat's end-of-turn (`chat.ChatFormat.end_of_turn`) or the
    end-of-sequence token. Raises `DataError` if the example has no target.

    Example:
        >>> task.tokenizer.decode(target_ids(task, {"mr": "name: Aromi", "label": "Aromi is a pub."}))
        'Aromi is a pub.<|im_end|>'
    """
    if "label" not in example:
        raise DataError("a generation task needs the target text in each training example (task.label_field)")
    if task.chat is not None:  # the reply starts the assistant's turn, right after its header
        return literal_ids(task.tokenizer, str(example["label"]).strip()) + list(task.chat.end_of_turn)
    lead = " " if task.kind == "causal" and mask_leading_space(task.template) else ""
    return literal_ids(task.tokenizer, lead + str(example["label"]).strip()) + [task.eos]


def prompt_and_target(task, example: dict) -> tuple[list[int], list[int]]:
    """(prompt ids, target ids) of a training example, within the task's `max_length`: on a causal LM
    prompt + target share it, the target keeping at most half of what the chat template leaves (its
    end token kept) and the prompt's fields truncated to the rest; on a seq2seq LM the encoder's prompt
    and the decoder's target each get `max_length`."""
    target = target_ids(task, example)
    if task.kind != "causal":
        keep = task.max_length
        return prompt_ids(task, example), target if len(target) <= keep else target[: keep - 1] + target[-1:]
    history = example.get(HISTORY) or []
    half = (task.max_length - (task.chat.wrapper_length(history) if task.chat is not None else 0)) // 2
    if len(target) > half:
        target = target[: max(1, half) - 1] + target[-1:]
    return prompt_ids(task, example, max_length=task.max_length - len(target)), target


def require_chat_format(backbone: Backbone):
    """The backbone tokenizer's `chat.ChatFormat`; raises `ConfigError` if it has no chat template."""
    from .chat import ChatFormat

    chat = ChatFormat.of(backbone.tokenizer)
    if chat is None:
        raise ConfigError(f"prompt.chat_template is true, but the tokenizer of {backbone.name!r} has no chat template; "
                          "set it to auto or false (the task's template alone renders the prompt)")
    return chat


def check_generates(classifier: nn.Module) -> None:
    """Raise `ModelError` unless `classifier` is a template task on a model that generates (causal or seq2seq)."""
    if not isinstance(classifier, (PromptClassifier, TextGenerator)):
        raise ModelError("generation needs a template task (a head-based task has no text to continue)")
    if classifier.kind == "masked":
        raise ModelError(f"{type(classifier.model).__name__} is a masked LM: it fills masks but does not generate; "
                         "use a causal or seq2seq model")


def chat_prompt_ids(task: nn.Module, field: str, chat_ids: list[int]) -> list[int]:
    """`prompt_ids` with `chat_ids` in place of the text of `field` (and the space before it): a
    conversation rendered by the tokenizer's chat template, its special tokens kept. The rest of the
    template (soft tokens, text, prefixes) is the task's own.

    Fields are tokenized piece by piece, so the field's ids are where prompts with two different
    one-token texts differ. Raises `ModelError` if the field is not part of the prompt (it comes after
    `{mask}`).

    Example:
        >>> chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, return_dict=True)
        >>> chat_prompt_ids(task, "text", chat["input_ids"])
    """
    a, b = prompt_ids(task, {field: "a"}), prompt_ids(task, {field: "b"})
    start = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
    if start is None:
        raise ModelError(f"the task's template {str(task.template)!r} has no {{{field}}} before {{mask}}: "
                         "a chat has no place in its prompt")
    same_end = next(i for i, (x, y) in enumerate(zip(reversed(a), reversed(b))) if x != y)
    return a[:start] + list(chat_ids) + a[len(a) - same_end :]


MAX_STOP = 4
"""Stop strings a decoding takes at most (as OpenAI's API, which `serve` follows)."""


@dataclass
class Decoding:
    """How `generate` continues a prompt: greedy (`num_beams` 1) or beam search, for at most
    `max_new_tokens` tokens, the text cut before the first stop string found. A config's `decoding:`
    section; an artifact stores the fields that differ from their defaults (`to_dict`).

    Raises `ConfigError` naming the key for a value it cannot decode with.

    Example:
        >>> Decoding(max_new_tokens=40, num_beams=4, stop=["\\n"]).to_dict()
        {'max_new_tokens': 40, 'num_beams': 4, 'stop': ['\\n']}
    """

    max_new_tokens: int = 64
    """Tokens to generate at most."""
    num_beams: int = 1
    """1: greedy; more: beam search with that many beams, the best beam's text."""
    stop: list[str] = field(default_factory=list)
    """Strings that end the text (at most `MAX_STOP`): it is cut before the first one found, which is not part of it."""

    def __post_init__(self):
        for name in ("max_new_tokens", "num_beams"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"decoding.{name} must be a whole number ≥ 1, got {value!r}")
        if not isinstance(self.stop, (list, tuple)) or not all(isinstance(s, str) and s for s in self.stop):
            raise ConfigError(f"decoding.stop must be a list of non-empty strings, got {self.stop!r}")
        if len(self.stop) > MAX_STOP:
            raise ConfigError(f"decoding.stop holds {len(self.stop)} strings; at most {MAX_STOP}")
        self.stop = list(self.stop)

    @classmethod
    def from_dict(cls, settings: dict) -> Decoding:
        """The decoding of a stored `to_dict()` (an artifact's `decoding`); missing keys take their defaults.

        Raises `ConfigError` for a value that is not an object, an unknown key, or a bad value.

        Example:
            >>> Decoding.from_dict({"num_beams": 4})
            Decoding(max_new_tokens=64, num_beams=4, stop=[])
        """
        if not isinstance(settings, dict):
            raise ConfigError(f"decoding must be an object of {list(cls.__dataclass_fields__)}, got {settings!r}")
        unknown = sorted(set(settings) - set(cls.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"unknown decoding key(s) {unknown}; valid keys: {list(cls.__dataclass_fields__)}")
        return cls(**settings)

    def to_dict(self) -> dict:
        """The fields that differ from their defaults, as JSON values (what an artifact stores)."""
        default = Decoding()
        return {k: v for k, v in asdict(self).items() if v != getattr(default, k)}

    def generate_kwargs(self) -> dict:
        """The keyword arguments of `generate_ids` this decoding sets."""
        return {"max_new_tokens": self.max_new_tokens, "num_beams": self.num_beams, "stop": tuple(self.stop)}


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """`text` up to the first of the `stop` strings found in it (the one that starts earliest), without
    it, and whether one was found. `generate` and the server's completions cut their text with it.

    Example:
        >>> cut_at_stop("Aromi serves food.\\nName: Cocum", ["\\n", "."])
        ('Aromi serves food', True)
    """
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def generate_ids(classifier: PromptClassifier | TextGenerator, prompts: list[list[int]], *, max_new_tokens: int = 20,
                 num_beams: int = 1, stop: Sequence[str] = (), batch_size: int = 8, progress: bool = False,
                 **generate_kwargs) -> list[list[int]]:
    """Continue prompts given as token ids (`prompt_ids`, `chat_prompt_ids`) with the task's soft tokens and
    prefixes in place; return each one's new token ids, in order, without padding and without the
    end-of-sequence token. Fewer than `max_new_tokens` ids means the model ended the text (or a stop
    string did).

    Greedy, or beam search with `num_beams`; generation of a row ends at the end-of-sequence token, at the
    task's extra end ids (`stop_ids`, a chat template's end of turn) and once its text ends with one of the
    `stop` strings (transformers' `stop_strings`; the ids keep the stop string, `cut_at_stop` cuts the
    text). Raises `ConfigError` if a prompt and `max_new_tokens` do not fit the model's positions. Prompts are batched by length (fewer pad tokens), on the model's device; `progress` shows a
    bar on a terminal. Other keyword arguments go to transformers' `generate` (`do_sample=True`, ...).

    Example:
        >>> generate_ids(clf, [prompt_ids(clf, {"sentence": "A gripping film."})], max_new_tokens=5)
        [[1049, 13]]
    """
    check_generates(classifier)
    _require_room(classifier, prompts, max_new_tokens)
    model: nn.Module = classifier.model
    tok = classifier.tokenizer
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    left = classifier.kind == "causal"
    eos = [i for i in dict.fromkeys((tok.eos_token_id, *getattr(classifier, "stop_ids", ()))) if i is not None]
    ends = {pad_id, *eos}
    settings = {"do_sample": False, "max_new_tokens": max_new_tokens, "num_beams": num_beams, "pad_token_id": pad_id,
                **({"eos_token_id": eos} if eos else {}),
                **({"stop_strings": list(stop), "tokenizer": tok} if stop else {}), **generate_kwargs}
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths together: less padding
    out: list[list[int]] = [[] for _ in prompts]
    was_training = classifier.training
    classifier.eval()
    device = model_device(model)
    try:
        for start in tqdm(range(0, len(order), batch_size), desc="generating", disable=bar_off(progress), leave=False):
            rows = order[start : start + batch_size]
            ids, attn = pad([prompts[i] for i in rows], pad_id, left=left)
            ids, attn = ids.to(device), attn.to(device)
            with torch.no_grad():
                bind_prompts(classifier)
                gen = model.generate(input_ids=ids, attention_mask=attn, **settings)
            new = gen[:, ids.shape[1] :] if left else gen[:, 1:]  # seq2seq: after the decoder's start token
            for i, row in zip(rows, new.tolist()):
                end = next((j for j, t in enumerate(row) if t in ends), len(row))
                out[i] = row[:end]
    finally:
        classifier.train(was_training)
    return out


def first_overflow(task: nn.Module, prompts: list[list[int]], max_new_tokens: int) -> tuple[int, int] | None:
    """(index of the first prompt that, with `max_new_tokens` new tokens, does not fit the model's position
    table, the positions there are for this task), or None when all fit or the model has no such table
    (`task.positions_for_tokens`: GPT-2's 1024...; generating past it would crash the forward pass).
    `generate_ids` and the server check with it, each raising its own error."""
    from .task import positions_for_tokens

    found = positions_for_tokens(task)
    if found is None:
        return None
    room = found[0] - found[1]
    return next(((i, room) for i, ids in enumerate(prompts) if len(ids) + max_new_tokens > room), None)


def _require_room(classifier: nn.Module, prompts: list[list[int]], max_new_tokens: int) -> None:
    """Raise `ConfigError` if a prompt and `max_new_tokens` new tokens do not fit (`first_overflow`)."""
    over = first_overflow(classifier, prompts, max_new_tokens)
    if over is not None:
        i, room = over
        raise ConfigError(f"input {i + 1} is {len(prompts[i])} tokens and decoding.max_new_tokens is {max_new_tokens}: "
                          f"together more than the {room} positions the model has for this task; lower "
                          f"max_new_tokens (--max-new-tokens) to {max(room - len(prompts[i]), 0)} or less")


def generate(classifier: PromptClassifier | TextGenerator, examples: list[dict], *, decoding: Decoding | None = None,
             batch_size: int = 8, progress: bool = False, **generate_kwargs) -> list[str]:
    """Continue each example's prompt as `decoding` says (default `Decoding()`: greedy, 64 new tokens);
    return the generated text (without the prompt), cut before the first stop string (`cut_at_stop`).
    Other keyword arguments go to `generate_ids` and transformers' `generate` (`use_cache=False`, ...).

    Example:
        >>> clf, _ = load_artifact("runs/prefix-gpt2")
        >>> generate(clf, [{"sentence": "A gripping film."}], decoding=Decoding(max_new_tokens=5, num_beams=2))
        [' great.']
    """
    check_generates(classifier)
    decoding = decoding or Decoding()
    prompts = [prompt_ids(classifier, ex) for ex in examples]
    new = generate_ids(classifier, prompts, batch_size=batch_size, progress=progress,
                       **{**decoding.generate_kwargs(), **generate_kwargs})
    return [cut_at_stop(text, decoding.stop)[0] for text in classifier.tokenizer.batch_decode(new, skip_special_tokens=True)]
