"""Models the speed benchmarks time: any local model folder, or a named random shape built from a config.

    model_path("bert-large")            # a random BERT-large-shaped masked LM, built once under runs/shapes/
    model_path("/path/to/local/model")  # used as it is

A shape is the architecture of a well-known checkpoint (layers, hidden size, heads, feed-forward size)
with random weights (seed 0) and a real tokenizer taken from a model that ships with the project
(BERT shapes: the uncased BERT vocabulary of the embedded all-MiniLM-L6-v2; Llama shapes: SmolLM2's
tokenizer). Speed does not depend on the weights, so a shape times a large model nobody here can
download. Built folders are ordinary `save_pretrained` folders, cached under `runs/shapes/<name>`.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# name: (family, layers, hidden, heads, intermediate); BERT sizes from Devlin et al. (2019) Table/§3.
SHAPES = {
    "bert-tiny": ("bert", 2, 128, 2, 512),
    "bert-base": ("bert", 12, 768, 12, 3072),
    "bert-large": ("bert", 24, 1024, 16, 4096),
    # BERT-large's depth with tiny widths: a step costs its per-operator overhead (Python, dispatch), the
    # regime of a GPU waiting on the CPU to launch kernels; what a CPU can show of GPU launch overhead.
    "bert-large-thin": ("bert", 24, 64, 4, 256),
    "llama-135m": ("llama", 30, 576, 9, 1536),  # SmolLM2-135M's shape
    "llama-1b": ("llama", 16, 2048, 32, 8192),  # Llama-3.2-1B's shape (with SmolLM2's vocabulary)
}


def model_path(name: str, cache: Path = ROOT / "runs/shapes") -> str:
    """The folder of `name`: a named shape (built on first use under `cache`), or `name` itself as a
    model folder or a name `prompttune.backbones.resolve_model_path` knows. Raises SystemExit for a
    path that does not exist and is no shape."""
    if name not in SHAPES:
        from prompttune.backbones import resolve_model_path

        path = resolve_model_path(name)
        if not Path(path).exists():
            raise SystemExit(f"--model: {name!r} is neither a local model folder nor one of the shapes {sorted(SHAPES)}")
        return path
    folder = cache / name
    if (folder / "config.json").exists():
        return str(folder)
    import torch
    from transformers import BertConfig, BertForMaskedLM, LlamaConfig, LlamaForCausalLM

    family, layers, hidden, heads, intermediate = SHAPES[name]
    torch.manual_seed(0)
    tokenizer = tokenizer_for(family, cache)
    if family == "bert":
        config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                            num_attention_heads=heads, intermediate_size=intermediate, max_position_embeddings=512,
                            architectures=["BertForMaskedLM"])
        model = BertForMaskedLM(config)
    else:
        kv_heads = 3 if name == "llama-135m" else 8
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
                             num_attention_heads=heads, num_key_value_heads=kv_heads, intermediate_size=intermediate,
                             max_position_embeddings=8192, tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                             eos_token_id=tokenizer.eos_token_id, architectures=["LlamaForCausalLM"])
        model = LlamaForCausalLM(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def tokenizer_for(family: str, cache: Path = ROOT / "runs/shapes"):
    """The tokenizer of a shape family, saved once under `cache/_tokenizers/<family>` (a few MB: what a GPU
    machine without the packages that ship the models needs to be given)."""
    from transformers import AutoTokenizer

    folder = cache / "_tokenizers" / family
    if (folder / "tokenizer_config.json").exists():
        return AutoTokenizer.from_pretrained(folder)
    from prompttune.backbones import SMOLLM2, resolve_model_path

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("all-MiniLM-L6-v2" if family == "bert" else SMOLLM2))
    tokenizer.save_pretrained(folder)
    return tokenizer


if __name__ == "__main__":  # python benchmarks/model_shapes.py: save the tokenizers (for benchmarks/gpu_checks.sh)
    for family in sorted({f for f, *_ in SHAPES.values()}):
        tokenizer_for(family)
        print(ROOT / "runs/shapes/_tokenizers" / family)
