"""A tiny, randomly initialised Qwen2-architecture chat model, built offline.

Tests and the CPU demo need a real `AutoModelForCausalLM` + `AutoTokenizer` pair that loads from a folder
(TRL reloads the reference model from `_name_or_path`) without any hub download. The tokenizer is a
byte-level BPE with Qwen2's pipeline (any id sequence decodes; any NFC text round-trips) trained on a corpus
of real ALFWorld/ScienceWorld text and our prompt templates, which keeps agent prompts short. The chat
template is ChatML with `{% generation %}` markers so TRL's `assistant_only_loss=True` works.

Building is deterministic: the same arguments give byte-identical files.
"""

from __future__ import annotations

import gzip
import json
import math
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

# <|endoftext|> pads (and ends plain text), <|im_end|> ends a chat turn: the Qwen2 instruct convention.
PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = (PAD_TOKEN, IM_START, IM_END)
# The agent's and judge's tags get one token each: short prompts, clean boundaries for parsing.
TAG_NAMES = ("think", "action", "planning", "explore", "reflection", "monitor", "answer", "advise", "rule")
TAG_TOKENS = tuple(t for name in TAG_NAMES for t in (f"<{name}>", f"</{name}>"))

CORPUS_ASSET = "tokenizer_corpus.txt"
# Chat-format words that sit between special tokens (repeated so BPE merges them whole).
CHAT_LINES = tuple(f"{IM_START}{role}\n{IM_END}\n" for role in ("system", "user", "assistant"))

# ChatML as Qwen2 writes it, without a default system prompt. The assistant's content and its <|im_end|>
# sit inside {% generation %}, so the stop token is trained; the newline after it is not.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- generation %}{{- message['content'] + '<|im_end|>' }}{%- endgeneration %}"
    "{{- '\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def read_corpus(path: str | Path | None = None) -> list[str]:
    """The tokenizer corpus lines: the packaged asset unless `path` is given (.txt or .txt.gz)."""
    if path is None:
        text = resources.files("gcd_trl").joinpath("assets", CORPUS_ASSET).read_text(encoding="utf-8")
    else:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer corpus not found: {path}")
        raw = path.read_bytes()
        text = (gzip.decompress(raw) if path.suffix == ".gz" else raw).decode("utf-8")
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"tokenizer corpus is empty: {path or CORPUS_ASSET}")
    return lines


def _chunks(lines: list[str], size: int = 32) -> Iterator[str]:
    # Several lines per sample, so newline + indentation runs ("\n\t") can be learned as merges.
    for i in range(0, len(lines), size):
        yield "\n".join(lines[i : i + size])


def train_tokenizer(vocab_size: int = 4096, corpus: str | Path | None = None):
    """A byte-level BPE tokenizer with ChatML special tokens and our chat template.

    The pipeline is Qwen2's (NFC, Qwen's pre-tokenizer regex, byte-level): transformers rebuilds a
    `qwen2` model's tokenizer with that pipeline whatever tokenizer.json says, so training with anything
    else would make the saved and the loaded tokenizer disagree. `vocab_size` is an upper bound counting
    everything (special tokens, the 256 bytes, merges, tag tokens): merges stop once no pair occurs twice
    in the corpus, which with the packaged corpus happens near 2.6k tokens, every env word then one token.
    """
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import Qwen2TokenizerFast
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    n_fixed = len(SPECIAL_TOKENS) + len(TAG_TOKENS) + 256
    if vocab_size < n_fixed + 64:
        raise ValueError(
            f"vocab_size must be at least {n_fixed + 64} (special and tag tokens, 256 bytes, 64 merges), "
            f"got {vocab_size}"
        )
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    # Untrimmed offsets: chat templates map {% generation %} spans to tokens through them.
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(TAG_TOKENS),
        min_frequency=2,
        special_tokens=[AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = sorted(set(read_corpus(corpus))) + [line for line in CHAT_LINES for _ in range(8)]
    tok.train_from_iterator(_chunks(lines), trainer=trainer)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in TAG_TOKENS])
    # Keeps the given backend; saved as "Qwen2Tokenizer", which transformers 4.x and 5.x both load.
    wrapped = Qwen2TokenizerFast(
        tokenizer_object=tok,
        unk_token=None,
        eos_token=IM_END,
        pad_token=PAD_TOKEN,
        model_max_length=4096,
        clean_up_tokenization_spaces=False,
    )
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


# ALFWorld names a thing by its type and a number ("shelf 1", "pen 2"); as one token each, a tiny model
# copies an object from the admissible list in one step instead of binding a number to a noun, and its
# prompts get ~20% shorter (docs/sft.md measures the cold start with and without).
ENTITY_MAX_NUMBER = {"receptacle": 40, "object": 12}


def entity_tokens() -> list[str]:
    """' <type> <n>' for every ALFWorld object and receptacle type (the leading space included, so an
    entity keeps the word boundary before it; a longer number wins: ' shelf 10' is not ' shelf 1' + '0')."""
    from gcd_trl.envs.alfworld import type_names

    receptacles, objects = type_names()
    return [
        f" {name} {n}"
        for name in sorted(receptacles + objects)
        for n in range(1, ENTITY_MAX_NUMBER["receptacle" if name in receptacles else "object"] + 1)
    ]


# The real architectures (their config.json on the Hub): with `shape=`, a random-init model of the real
# size, the project's tokenizer and the embedding padded to the real vocabulary. It learns nothing, but
# memory and speed on a GPU can be measured without a hub.
SHAPES: dict[str, dict] = {
    "qwen2.5-1.5b": dict(
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        vocab_size=151936,
        tie_word_embeddings=True,
        max_position_embeddings=32768,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
    ),
    "qwen2.5-7b": dict(
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        vocab_size=152064,
        tie_word_embeddings=False,
        max_position_embeddings=32768,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
    ),
}


def shape_config(shape: str, pad_id: int, eos_id: int, tokens: int):
    """The Qwen2Config of a real architecture (`SHAPES`), its embedding covering the tokenizer's `tokens`."""
    from transformers import Qwen2Config

    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}: one of {', '.join(SHAPES)}")
    values = dict(SHAPES[shape])
    if tokens > values["vocab_size"]:
        raise ValueError(f"the tokenizer has {tokens} tokens, more than {shape}'s {values['vocab_size']}")
    return Qwen2Config(
        **values,
        bos_token_id=pad_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        use_sliding_window=False,
    )


def parameters_of(config) -> int:
    """Parameters a Qwen2 config makes (tied embeddings counted once), without building the model."""
    h, i, n = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    head = h // config.num_attention_heads
    kv = config.num_key_value_heads * head
    attention = h * h + h + 2 * (h * kv + kv) + h * h  # q (with bias), k and v (with bias), o
    layer = attention + 3 * h * i + 2 * h  # MLP gate/up/down, two RMSNorm gains
    embedding = config.vocab_size * h
    return n * layer + h + embedding * (1 if config.tie_word_embeddings else 2)


def make_config(
    vocab_size: int, hidden_size: int, num_layers: int, pad_id: int, eos_id: int, intermediate_size: int = 0
):
    """A small Qwen2 config: head dim 64, 2:1 grouped-query attention, MLP 4x hidden unless
    `intermediate_size` says otherwise, tied embeddings."""
    from transformers import Qwen2Config

    heads = max(1, hidden_size // 64)
    return Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=pad_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        use_sliding_window=False,
    )


def build_tiny_model(
    out_dir: str | Path,
    seed: int = 0,
    hidden_size: int = 256,
    num_layers: int = 4,
    vocab_size: int = 4096,
    corpus: str | Path | None = None,
    with_entity_tokens: bool = False,
    intermediate_size: int = 0,
    shape: str | None = None,
) -> Path:
    """Write tokenizer, config, generation config and random weights to `out_dir`; returns it.

    `AutoTokenizer.from_pretrained(out_dir)` and `AutoModelForCausalLM.from_pretrained(out_dir)` load it.
    The model's vocabulary is the tokenizer's actual size (at most `vocab_size`, see `train_tokenizer`);
    `seed` changes the weights only. `with_entity_tokens` adds one token per ALFWorld entity
    (`entity_tokens()`), on top of the `vocab_size` bound. `shape` (a key of SHAPES) builds the real
    architecture instead (hidden_size, num_layers and intermediate_size are then ignored), initialised
    and saved in bfloat16 (as the real checkpoints are): 3 GB for 1.5B, 15 GB for 7B.
    """
    import torch
    from transformers import GenerationConfig, Qwen2ForCausalLM
    from transformers.utils import logging as hf_logging

    if hidden_size % 64 or hidden_size <= 0:
        raise ValueError(f"hidden_size must be a positive multiple of 64, got {hidden_size}")
    if num_layers <= 0:
        raise ValueError(f"num_layers must be positive, got {num_layers}")
    tokenizer = train_tokenizer(vocab_size, corpus)
    if with_entity_tokens:
        from tokenizers import AddedToken

        tokenizer.add_tokens([AddedToken(t, normalized=False, special=False) for t in entity_tokens()])
    pad_id = tokenizer.convert_tokens_to_ids(PAD_TOKEN)
    eos_id = tokenizer.convert_tokens_to_ids(IM_END)
    if intermediate_size < 0:
        raise ValueError(f"intermediate_size must be positive (0: 4 x hidden_size), got {intermediate_size}")
    if shape is None:
        config = make_config(len(tokenizer), hidden_size, num_layers, pad_id, eos_id, intermediate_size)
        dtype = torch.float32
    else:
        config = shape_config(shape, pad_id, eos_id, len(tokenizer))
        dtype = torch.bfloat16  # the real checkpoints' dtype; half the memory while it is built

    rng_state = torch.random.get_rng_state()
    default_dtype = torch.get_default_dtype()
    try:
        torch.manual_seed(seed)
        torch.set_default_dtype(dtype)
        model = Qwen2ForCausalLM(config).to(dtype)
    finally:
        torch.set_default_dtype(default_dtype)
        torch.random.set_rng_state(rng_state)  # building must not disturb the caller's RNG
    # Both stop tokens end generation: <|im_end|> after a chat turn, <|endoftext|> after plain text.
    model.generation_config = GenerationConfig(
        bos_token_id=pad_id, eos_token_id=[eos_id, pad_id], pad_token_id=pad_id
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    progress = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(out, safe_serialization=True)
    finally:
        if progress:
            hf_logging.enable_progress_bar()
    tokenizer.save_pretrained(out)
    return out


def count_parameters(model_or_dir) -> int:
    """Distinct parameters (tied embeddings counted once) of a model or of a saved model folder."""
    if isinstance(model_or_dir, (str, Path)):
        from safetensors import safe_open

        folder = Path(model_or_dir)
        index = folder / "model.safetensors.index.json"
        if index.is_file():  # sharded (the shipped warm start)
            paths = sorted({folder / name for name in json.loads(index.read_text())["weight_map"].values()})
        else:
            paths = [folder / "model.safetensors"]
        if not all(p.is_file() for p in paths):
            raise FileNotFoundError(f"no model.safetensors (or its shards) in {model_or_dir}")
        total = 0
        for path in paths:
            with safe_open(str(path), framework="pt") as f:
                total += sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
        return total
    return sum(p.numel() for p in model_or_dir.parameters())
