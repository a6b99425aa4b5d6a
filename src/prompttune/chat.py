"""Chat templates: a generation task's prompt in the model's own conversation format.

For a model whose tokenizer has a chat template (SmolLM2, Llama, Qwen...), an instruction task is a
conversation: the task's template (everything before `{mask}`: its fields, soft tokens and text) is
the content of the user's last turn, earlier turns (a `messages` row's history, a system message)
come before it, and the target is the assistant's reply followed by the chat's end-of-turn token.
With SmolLM2 an Alpaca row renders as

    <|im_start|>system\\nYou are a helpful AI assistant named SmolLM...<|im_end|>\\n
    <|im_start|>user\\n<instruction>\\n\\n<input><|im_end|>\\n<|im_start|>assistant\\n   ← prompt
    <output><|im_end|>                                                                 ← target

`tokenizer.apply_chat_template` renders the conversation; message contents are data and are
tokenized literally (`templates.literal_ids`), so a "<|im_start|>" written in a message stays text:
only the chat template makes special tokens. To keep the two apart, each content is replaced by a
marker, the template renders the conversation as text, and the text is cut at the markers into the
template's pieces (tokenized with their special tokens) and the contents (tokenized literally, or
the task template's ids for the last user turn). The same rendering serves training, `eval`,
`generate` and the server's `/v1/chat/completions`.

Sources: Hugging Face's chat templating guide (`apply_chat_template`, `add_generation_prompt`);
FLAN (Wei et al. 2022) for instruction/input/output tuning.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import lru_cache

from .errors import DataError, ModelError
from .templates import literal_ids, special_ids

_MARK = "PTCHATMARK{}X"
_MARKS = re.compile(r"PTCHATMARK(\d+)X")
USER, ASSISTANT = "user", "assistant"


def has_chat_template(tokenizer) -> bool:
    """Whether `tokenizer` carries a chat template (`tokenizer.chat_template` is set)."""
    return bool(getattr(tokenizer, "chat_template", None))


def uses_chat_template(setting: bool | str | None, kind: str, tokenizer) -> bool:
    """Whether a generation task renders its prompt in the chat template: `prompt.chat_template` true or
    false as set; auto ("auto" or None) when the model is causal and its tokenizer has one.

    Example:
        >>> uses_chat_template("auto", "causal", smollm2_tokenizer), uses_chat_template(None, "seq2seq", t5_tokenizer)
        (True, False)
    """
    if setting is None or setting == "auto":
        return kind == "causal" and has_chat_template(tokenizer)
    return bool(setting)


@dataclass(frozen=True)
class ChatFormat:
    """A tokenizer's chat template, turned into token ids around a task's own prompt ids.

    `end_of_turn`: the ids that close the assistant's reply (SmolLM2: `<|im_end|>`): what the
    template writes after a reply, up to and including its first special token (the tokenizer's
    end-of-sequence token if the template writes none). A target ends with them, and generation
    stops at them.

    Example:
        >>> chat = ChatFormat.of(tokenizer)            # None if the tokenizer has no chat template
        >>> ids = chat.prompt_ids([], literal_ids(tokenizer, "Name a colour."))
        >>> tokenizer.decode(ids)
        '<|im_start|>system\\n...<|im_end|>\\n<|im_start|>user\\nName a colour.<|im_end|>\\n<|im_start|>assistant\\n'
    """

    tokenizer: object
    end_of_turn: tuple[int, ...]

    @property
    def sha256(self) -> str:
        """The chat template's checksum: a task records it, and refuses to reload under another template."""
        return hashlib.sha256(str(self.tokenizer.chat_template).encode("utf-8")).hexdigest()

    @classmethod
    def of(cls, tokenizer) -> ChatFormat | None:
        """The tokenizer's chat format, or None if it has no chat template. Raises `ModelError` if
        the template rewrites message text (the contents could not be placed) or fails to render a
        plain user/assistant exchange."""
        if not has_chat_template(tokenizer):
            return None
        text = _render(tokenizer, [{"role": USER, "content": _MARK.format(0)},
                                   {"role": ASSISTANT, "content": _MARK.format(1)}], generation_prompt=False)
        after = text.split(_MARK.format(1), 1)
        if len(after) != 2:
            raise ModelError("the tokenizer's chat template rewrites message text, so prompttune cannot place a task's "
                             "prompt in it; set prompt.chat_template: false to render with the task's template")
        ids = tokenizer(after[1], add_special_tokens=False)["input_ids"]
        specials = special_ids(tokenizer)
        end = next((i + 1 for i, t in enumerate(ids) if t in specials), None)
        eot = tuple(ids[:end]) if end is not None else (tokenizer.eos_token_id,)
        return cls(tokenizer, eot)

    def prompt_ids(self, history: list[dict], user_ids: list[int]) -> list[int]:
        """The conversation `history` (earlier turns: role/content dicts), then a user turn whose content
        is `user_ids`, then the assistant's turn opened (`add_generation_prompt`): the ids a reply
        continues. Raises `DataError` if the chat template refuses the conversation (roles out of order...)."""
        before, after = self._wrap(_history_key(history))
        return [*before, *user_ids, *after]

    def wrapper_length(self, history: list[dict]) -> int:
        """Tokens the conversation adds around the user turn's content (for `max_length` budgets)."""
        before, after = self._wrap(_history_key(history))
        return len(before) + len(after)

    def stop_ids(self) -> tuple[int, ...]:
        """The special ids among `end_of_turn`: generation ends at any of them."""
        specials = special_ids(self.tokenizer)
        return tuple(t for t in self.end_of_turn if t in specials)

    def _wrap(self, history: tuple) -> tuple[tuple[int, ...], tuple[int, ...]]:
        return _wrap(self.tokenizer, history)


def _history_key(history: list[dict]) -> tuple:
    return tuple((str(m["role"]), str(m["content"])) for m in history)


@lru_cache(maxsize=256)
def _wrap(tokenizer, history: tuple) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(ids before the last user turn's content, ids after it) for a conversation `history` of
    (role, content) pairs; cached, as most rows share their history (none, or one system message)."""
    messages = [{"role": r, "content": _MARK.format(i)} for i, (r, _) in enumerate(history)]
    last = len(history)
    messages.append({"role": USER, "content": _MARK.format(last)})
    text = _render(tokenizer, messages, generation_prompt=True)
    pieces = _MARKS.split(text)  # text, mark number, text, mark number, ..., text
    found = [int(n) for n in pieces[1::2]]
    if found != list(range(last + 1)):
        raise ModelError("the tokenizer's chat template rewrites or reorders message text, so prompttune cannot place a "
                         "task's prompt in it; set prompt.chat_template: false to render with the task's template")
    ids: list[int] = []
    for i, piece in enumerate(pieces[:-1:2]):
        if piece:
            ids += tokenizer(piece, add_special_tokens=False)["input_ids"]
        if i < last:
            ids += literal_ids(tokenizer, history[i][1])
        else:
            before = ids
    after = tokenizer(pieces[-1], add_special_tokens=False)["input_ids"] if pieces[-1] else []
    return tuple(before), tuple(after)


def _render(tokenizer, messages: list[dict], *, generation_prompt: bool) -> str:
    try:
        return tokenizer.apply_chat_template(messages, add_generation_prompt=generation_prompt, tokenize=False)
    except Exception as e:  # the template's own checks (jinja2 raise_exception: roles out of order, ...)
        roles = [m["role"] for m in messages]
        raise DataError(f"the model's chat template refused a conversation with roles {roles}: {e}") from None
