"""Tiny random Hugging Face models with locally built tokenizers, for tests.

Every ``make_*`` factory writes an ordinary local model directory
(``model.save_pretrained`` + ``tokenizer.save_pretrained``) and returns it, so
code under test can load it with ``AutoTokenizer.from_pretrained(directory)``
and ``AutoModelFor...from_pretrained(directory)`` exactly as it would a hub id.
Nothing is downloaded. Weights are random but seeded, and tokenizers are
trained (or written) from the fixed word lists below, so builds are
deterministic.

Facts tests may rely on (checked in ``tests/test_tiny_models.py``):

* Every word in ``ENGLISH_WORDS`` (lowercase; a superset of the short list
  ``SINGLE_TOKEN_WORDS``) is one token in every English tokenizer (BERT,
  RoBERTa, GPT-2, T5), both as ``"word"`` and as ``" word"``; so is every
  mark in ``PUNCTUATION``.
* Every word in ``MULTI_TOKEN_WORDS`` splits into two or more tokens in every
  English tokenizer; in BERT the split is exactly ``MULTI_TOKEN_WORDS[word]``.
* In the Chinese BERT every character of ``ZH_SEED_TEXT`` is its own token,
  so e.g. ``开心`` and ``水果`` are two tokens each.
"""

from __future__ import annotations

import json
import pathlib

import torch
from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, trainers
from transformers import (
    BertConfig,
    BertForMaskedLM,
    BertTokenizerFast,
    GPT2Config,
    GPT2LMHeadModel,
    GPT2TokenizerFast,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    RobertaConfig,
    RobertaForMaskedLM,
    RobertaTokenizerFast,
    T5Config,
    T5ForConditionalGeneration,
    T5TokenizerFast,
)

SEED = 0
HIDDEN = 32
LAYERS = 2
HEADS = 4
INTERMEDIATE = 64
MAX_POSITIONS = 128
# Weight init spread for BERT/RoBERTa/GPT-2. The library default (0.02) makes a tiny random model's
# attention nearly uniform and its outputs nearly independent of the other tokens, so prompts
# (soft tokens) would have nothing to learn; at 0.2 the context matters.
INIT_RANGE = 0.2
NUM_SENTINELS = 10

# Words that are whole tokens in every English tokenizer built here.
SINGLE_TOKEN_WORDS: tuple[str, ...] = (
    "it", "was", "great", "terrible", "good", "bad", "awful", "movie", "film",
    "the", "a", "is", "this", "and", "not", "very", "fun", "boring", "yes",
    "no", "maybe", "wonder", "positive", "negative", "neutral", "true",
    "false", "review", "sentence", "question", "answer", "topic", "sports",
    "business", "science", "world",
)

# Words that split into several tokens in every English tokenizer built here.
# The value is the exact WordPiece split in the BERT tokenizer.
MULTI_TOKEN_WORDS: dict[str, tuple[str, ...]] = {
    "wonderful": ("wonder", "##ful"),
    "movies": ("movie", "##s"),
    "boringly": ("boring", "##ly"),
    "greatest": ("great", "##est"),
    "films": ("film", "##s"),
}

PUNCTUATION: tuple[str, ...] = ("?", ".", ",", "!", "'", '"', ":", ";", "-", "(", ")")

_MORE_WORDS = """
i you he she we they me him her us them my your his our their its that these
those there here what which who whom whose when where why how all any both
each few more most other some such only own same so than too can will just
should now be been being have has had do does did doing would could might
must shall may am are were an or but if because as until while of at by for
with about against between into through during before after above below to
from up down in out on off over under again further then once also really
quite rather pretty truly simply totally absolutely actually never always
often sometimes ever still even much many lot little big small long short
new old young high low best better worse worst nice fine okay poor excellent
amazing fantastic brilliant superb perfect lovely beautiful pleasant enjoyable
entertaining funny hilarious sad dull slow bland weak mediocre horrible
dreadful poorly love loved like liked hate hated enjoy enjoyed recommend
watch watched see saw seen make made get got go went think thought say said
know knew feel felt look looked want wanted give gave take took come came
find found tell told work worked seem seemed try tried leave left call
called story plot acting actor actress actors cast scene scenes ending end
script director music sound picture show series book books time times day
days year years way thing things people man woman life world part place
case point group number fact hand eye night home game team player match win
lost money market company price stock bank news report government country
city state war election president health food water car phone computer
technology research study data label text input output task example category
class one two three four five six seven eight nine ten first second last
next
"""

# Lowercase English words the English tokenizers know as whole words.
# "wonderful" is deliberately absent so that it always splits.
ENGLISH_WORDS: tuple[str, ...] = tuple(
    dict.fromkeys(
        w
        for w in (*SINGLE_TOKEN_WORDS, *_MORE_WORDS.split())
        if w not in MULTI_TOKEN_WORDS
    )
)

WORDPIECE_SUFFIXES: tuple[str, ...] = (
    "##s", "##es", "##ed", "##ing", "##ly", "##er", "##est", "##ful",
    "##ness", "##able", "##y", "##n't",
)

ZH_SEED_TEXT = "今天天气很好。我很开心。难过。这是一条评论：水果很好吃，电脑不错，差劲！"

_ZH_COMMON = """
的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年得就那要下以生会自着去之过
家学对可她里后小么心多天而能好都然没日于起还发成事只作当想看文无开手十用主行方又如前所本
见经头面公同三已老从动两长知民样现其些机高理物实加心点月问力向意想二进几气很比给她正新外
体间特相回什定原把文山话工部名明信提产问光者门情身走车路别做先把分接少真全满非边百话题品
位表元报员数种活较西结各果必目期业却果直听让流间吃喝买卖东南北水火电脑书读写字语课教师生
朋友爱恨喜欢笑哭美丑坏差劲优秀糟糕棒极失望满意推荐讨厌无聊有趣精彩感动难过伤快乐悲愤怒惊
正负积极消极中性评论句子标签问题答案类别体育财经科技娱乐游戏新闻政治社会健康教育汽车房产
是否对错一二三四五六七八九十零
"""

ZH_PUNCTUATION = "。，、；：？！“”‘’（）《》…—·,.!?;:\"'()"


def _seed() -> None:
    """Seed torch so random weights are identical on every build."""
    torch.manual_seed(SEED)


def _english_corpus() -> list[str]:
    """Return the small fixed English corpus the byte-level BPE tokenizers learn.

    Every vocabulary word appears both at the start of a line and after a
    space, so both ``"word"`` and ``" word"`` become whole tokens. The
    multi-token words never appear, so they cannot become single tokens.
    """
    lines: list[str] = []
    for word in ENGLISH_WORDS:
        lines.append(word)
        lines.append(f"the {word} .")
    templates = (
        "it was {} !",
        "this movie is {} , is it not ?",
        "the film was very {} .",
        "yes , no , maybe {} .",
    )
    for template in templates:
        for word in SINGLE_TOKEN_WORDS:
            lines.append(template.format(word))
    lines.append(" ".join(PUNCTUATION))
    return lines


def _save(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, directory: pathlib.Path
) -> pathlib.Path:
    """Check sizes agree, then save model and tokenizer into ``directory``."""
    if model.config.vocab_size != len(tokenizer):
        raise AssertionError(
            f"vocab_size {model.config.vocab_size} != len(tokenizer) {len(tokenizer)}"
        )
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def _bert_config(tokenizer: BertTokenizerFast) -> BertConfig:
    """Tiny BERT config sized to ``tokenizer``."""
    return BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=INTERMEDIATE,
        max_position_embeddings=MAX_POSITIONS,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=INIT_RANGE,
    )


def _wordpiece_vocab(words: list[str]) -> dict[str, int]:
    """Return a BERT vocab dict: the five specials first, then ``words`` in order."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokens = list(dict.fromkeys([*specials, *words]))
    return {token: index for index, token in enumerate(tokens)}


def make_bert(directory: pathlib.Path) -> pathlib.Path:
    """Build a tiny BertForMaskedLM with an English WordPiece tokenizer.

    The vocab is ``[PAD] [UNK] [CLS] [SEP] [MASK]`` (ids 0-4), the English
    words, punctuation, ``WORDPIECE_SUFFIXES``, digits, and single letters
    with their ``##`` forms (so unknown words split into letters, not [UNK]).
    """
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    words = [
        *ENGLISH_WORDS,
        *PUNCTUATION,
        *WORDPIECE_SUFFIXES,
        *(str(d) for d in range(10)),
        *letters,
        *(f"##{c}" for c in letters),
    ]
    tokenizer = BertTokenizerFast(
        vocab=_wordpiece_vocab(words), do_lower_case=True, model_max_length=MAX_POSITIONS
    )
    _seed()
    model = BertForMaskedLM(_bert_config(tokenizer))
    return _save(model, tokenizer, directory)


def make_bert_zh(directory: pathlib.Path) -> pathlib.Path:
    """Build a tiny BertForMaskedLM with a Chinese character vocabulary.

    Every character of ``ZH_SEED_TEXT``, a few hundred common characters and
    Chinese/ASCII punctuation are single tokens; BERT's Chinese-character
    splitting makes each character its own token (``开心`` -> 2 tokens).
    """
    chars = [c for c in ZH_SEED_TEXT + _ZH_COMMON + ZH_PUNCTUATION if not c.isspace()]
    words = [*chars, *(str(d) for d in range(10))]
    tokenizer = BertTokenizerFast(
        vocab=_wordpiece_vocab(words), do_lower_case=True, model_max_length=MAX_POSITIONS
    )
    _seed()
    model = BertForMaskedLM(_bert_config(tokenizer))
    return _save(model, tokenizer, directory)


def _train_byte_level_bpe(
    special_tokens: list[str],
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Train a byte-level BPE on the English corpus; return (vocab, merges).

    ``special_tokens`` take the first ids. The vocab cap is high enough that
    every corpus word (with and without a leading space) ends up one token.
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=5000,
        min_frequency=1,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_english_corpus(), trainer=trainer)
    model = json.loads(tokenizer.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return model["vocab"], merges


def make_roberta(directory: pathlib.Path) -> pathlib.Path:
    """Build a tiny RobertaForMaskedLM with a byte-level BPE tokenizer.

    Special ids: ``<s>``=0, ``<pad>``=1, ``</s>``=2, ``<unk>``=3 (as in real
    RoBERTa) and ``<mask>``=4 (real RoBERTa has it last).
    ``max_position_embeddings`` is ``MAX_POSITIONS + 2`` because RoBERTa
    positions start after the padding index.
    """
    vocab, merges = _train_byte_level_bpe(["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    # As in real RoBERTa, "<mask>" swallows the space before it:
    # "was <mask>" -> [was, <mask>].
    mask = AddedToken("<mask>", lstrip=True, rstrip=False, normalized=False, special=True)
    tokenizer = RobertaTokenizerFast(
        vocab=vocab, merges=merges, mask_token=mask, model_max_length=MAX_POSITIONS
    )
    config = RobertaConfig(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=INTERMEDIATE,
        max_position_embeddings=MAX_POSITIONS + 2,
        type_vocab_size=1,
        initializer_range=INIT_RANGE,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    _seed()
    model = RobertaForMaskedLM(config)
    return _save(model, tokenizer, directory)


def make_gpt2(directory: pathlib.Path) -> pathlib.Path:
    """Build a tiny GPT2LMHeadModel with a byte-level BPE tokenizer.

    ``<|endoftext|>`` is bos, eos and unk and has the LAST id, as in real
    GPT-2. No pad token is set, as in real GPT-2.
    """
    vocab, merges = _train_byte_level_bpe([])
    vocab = {**vocab, "<|endoftext|>": len(vocab)}
    tokenizer = GPT2TokenizerFast(vocab=vocab, merges=merges, model_max_length=MAX_POSITIONS)
    return _save(_gpt2_model(tokenizer), tokenizer, directory)


def _gpt2_model(tokenizer: GPT2TokenizerFast) -> GPT2LMHeadModel:
    """The tiny GPT-2 for `tokenizer`'s vocabulary and special tokens, seeded."""
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_embd=HIDDEN,
        n_layer=LAYERS,
        n_head=HEADS,
        n_inner=INTERMEDIATE,
        n_positions=MAX_POSITIONS,
        initializer_range=INIT_RANGE,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    _seed()
    return GPT2LMHeadModel(config)


CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a tiny assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
"""SmolLM2's chat template (ChatML with a default system message), shortened."""


def make_gpt2_chat(directory: pathlib.Path) -> pathlib.Path:
    """Build a tiny decoder-only chat model: the tiny GPT-2 with ChatML's ``<|im_start|>`` and
    ``<|im_end|>`` special tokens and a ChatML chat template, ``<|im_end|>`` being eos and pad, as in
    SmolLM2-Instruct."""
    vocab, merges = _train_byte_level_bpe([])
    vocab = {**vocab, "<|endoftext|>": len(vocab), "<|im_start|>": len(vocab) + 1, "<|im_end|>": len(vocab) + 2}
    tokenizer = GPT2TokenizerFast(vocab=vocab, merges=merges, model_max_length=MAX_POSITIONS, bos_token="<|im_start|>",
                                  eos_token="<|im_end|>", pad_token="<|im_end|>", unk_token="<|endoftext|>")
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.chat_template = CHATML
    return _save(_gpt2_model(tokenizer), tokenizer, directory)


def _t5_unigram_vocab() -> list[tuple[str, float]]:
    """Return ``(piece, score)`` pairs for a T5-style Unigram tokenizer.

    Built directly from the word lists rather than trained: a Unigram trainer
    on a corpus this small keeps only fragments (``"great"`` came out as
    ``▁gr e at``). Scores favour the fewest pieces, so every English word is
    one ``▁word`` piece and ``MULTI_TOKEN_WORDS`` split as in BERT
    (``wonderful`` -> ``▁wonder ful``). Layout as in T5: ``<pad>``=0,
    ``</s>``=1, ``<unk>``=2, pieces, then ``<extra_id_9>`` ... ``<extra_id_0>``
    (so ``<extra_id_0>`` has the last id).
    """
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    symbols = [*letters, *(c.upper() for c in letters), *(str(d) for d in range(10)), *PUNCTUATION]
    scored: list[tuple[list[str], float]] = [
        (["<pad>", "</s>", "<unk>"], 0.0),
        ([f"▁{w}" for w in ENGLISH_WORDS], -8.0),
        ([s.removeprefix("##") for s in WORDPIECE_SUFFIXES], -9.0),
        ([*symbols, *(f"▁{c}" for c in symbols)], -10.0),
        (["▁"], -11.0),
        ([f"<extra_id_{i}>" for i in reversed(range(NUM_SENTINELS))], 0.0),
    ]
    pieces: dict[str, float] = {}
    for group, score in scored:
        for piece in group:
            pieces.setdefault(piece, score)
    return list(pieces.items())


def make_t5(directory: pathlib.Path) -> pathlib.Path:
    """Build a tiny T5ForConditionalGeneration with a Unigram tokenizer.

    ``<pad>``=0 (also ``decoder_start_token_id``), ``</s>``=1, ``<unk>``=2,
    sentinels ``<extra_id_0>`` ... ``<extra_id_9>`` as additional special
    tokens; encoding appends ``</s>``.
    """
    tokenizer = T5TokenizerFast(
        vocab=_t5_unigram_vocab(), extra_ids=NUM_SENTINELS, model_max_length=MAX_POSITIONS
    )
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=HIDDEN,
        d_kv=HIDDEN // HEADS,
        d_ff=INTERMEDIATE,
        num_layers=LAYERS,
        num_decoder_layers=LAYERS,
        num_heads=HEADS,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=MAX_POSITIONS,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    _seed()
    model = T5ForConditionalGeneration(config)
    return _save(model, tokenizer, directory)
