"""The tiny offline model: loads with the Auto classes, trains, generates, masks assistant turns, builds
byte-identically, and works with TRL's SFTTrainer (assistant_only_loss)."""

from __future__ import annotations

import hashlib
import math
import random
import unicodedata
from pathlib import Path

import pytest
import torch

from gcd_trl.tiny_model import IM_END, PAD_TOKEN, TAG_TOKENS, build_tiny_model, count_parameters

CHATS = [
    [
        {"role": "system", "content": "You are a household agent."},
        {
            "role": "user",
            "content": "Your task is to: put a clean mug in coffeemachine.\nYou are in the "
            "middle of a room. Your admissible actions are: 'go to countertop 1', 'go to sinkbasin 1', 'look'.",
        },
        {
            "role": "assistant",
            "content": "<think>The mug may be on the countertop.</think><action>go to countertop 1</action>",
        },
        {"role": "user", "content": "You arrive at countertop 1. On the countertop 1, you see a mug 2."},
        {
            "role": "assistant",
            "content": "<think>Take it.</think><action>take mug 2 from countertop 1</action>",
        },
    ],
    [
        {
            "role": "user",
            "content": "Your task is to boil water.\nThis room is called the kitchen. In it, "
            "you see:\n\ta stove, which is turned off.\n\ta sink, which is turned off.",
        },
        {
            "role": "assistant",
            "content": "<planning>step 1: find water</planning><action>look around</action>",
        },
    ],
    [
        {"role": "user", "content": "Judge the action 'go to cabinet 3'."},
        {
            "role": "assistant",
            "content": "<think>It explores a new place.</think><answer>\\boxed{1}</answer>",
        },
    ],
]


def _hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)


@pytest.fixture(scope="module")
def tokenizer(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def model(model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir)


def test_loads_with_auto_classes(model_dir, tokenizer, model):
    assert model.config.model_type == "qwen2"
    assert model.config.vocab_size == len(tokenizer)
    assert 1_000 <= len(tokenizer) <= 4_096
    assert model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert 1_000_000 <= count_parameters(model) <= 10_000_000
    assert count_parameters(model_dir) == count_parameters(model)
    assert (model_dir / "model.safetensors").is_file()

    assert tokenizer.eos_token == IM_END and tokenizer.pad_token == PAD_TOKEN
    im_end, pad = tokenizer.convert_tokens_to_ids([IM_END, PAD_TOKEN])
    assert model.config.eos_token_id == im_end and model.config.pad_token_id == pad
    assert set(model.generation_config.eos_token_id) == {im_end, pad}
    assert model.generation_config.pad_token_id == pad
    for tag in TAG_TOKENS:  # one token each, kept when special tokens are skipped
        ids = tokenizer(tag, add_special_tokens=False).input_ids
        assert len(ids) == 1 and tokenizer.decode(ids, skip_special_tokens=True) == tag


def test_loaded_tokenizer_matches_saved_pipeline(model_dir, tokenizer):
    """transformers rebuilds a qwen2 tokenizer's pipeline on load; it must agree with tokenizer.json."""
    from tokenizers import Tokenizer

    raw = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    for chat in CHATS:
        text = tokenizer.apply_chat_template(chat, tokenize=False)
        ids = tokenizer(text, add_special_tokens=False).input_ids
        assert ids == raw.encode(text, add_special_tokens=False).ids


def test_round_trip_arbitrary_text(tokenizer):
    rng = random.Random(0)
    samples = [
        "You arrive at countertop 1. On the countertop 1, you see a apple 2, and a mug 1.",
        "\ta substance called air\n\n  \r\n\x00\x07 tabs\tand  double  spaces ",
        "Ünïcödé: naïve café, 日本語のテキスト, עברית, العربية, emoji 🤖🧪🔥, math ∑∫√ 3.14e-10",
        "<think>x</think><action>go to desk 1</action> \\boxed{0} <|im_end|> not special here? <|im_start|>",
    ]
    for _ in range(20):
        chars = [chr(rng.randrange(0x20, 0x2FFFF)) for _ in range(rng.randrange(1, 60))]
        samples.append("".join(c for c in chars if not 0xD800 <= ord(c) <= 0xDFFF))
    for text in samples:
        # The pipeline is Qwen2's, which NFC-normalises: NFC text (all env and template text) is lossless.
        text = unicodedata.normalize("NFC", text)
        ids = tokenizer(text, add_special_tokens=False).input_ids
        assert tokenizer.decode(ids) == text
    # Any id sequence decodes: model outputs can be arbitrary.
    ids = [rng.randrange(len(tokenizer)) for _ in range(300)]
    assert isinstance(tokenizer.decode(ids, skip_special_tokens=True), str)


def test_env_text_is_compact(tokenizer):
    """Env words are single tokens (the corpus is real env text); digits are split as Qwen2 splits them."""
    obs = (
        "You arrive at countertop 1. On the countertop 1, you see a butterknife 1, a dishsponge 2, "
        "a egg 1, a fork 2, a lettuce 1, a mug 2, a peppershaker 1, and a spatula 1."
    )
    actions = ", ".join(
        f"'{a}'"
        for a in (
            "go to cabinet 1",
            "go to coffeemachine 1",
            "go to fridge 1",
            "go to microwave 1",
            "go to sinkbasin 1",
            "go to stoveburner 1",
            "take mug 2 from countertop 1",
            "heat egg 1 with microwave 1",
            "inventory",
        )
    )
    sw = "This room is called the kitchen. In it, you see:\n\ta thermometer, currently reading a temperature"
    for text in (obs, actions, sw):
        assert len(tokenizer(text).input_ids) * 2.5 < len(text)
    for word in (
        "butterknife",
        "dishsponge",
        "peppershaker",
        "coffeemachine",
        "sinkbasin",
        "stoveburner",
        "countertop",
        "microwave",
        "thermometer",
        "temperature",
        "inventory",
    ):
        assert len(tokenizer(" " + word).input_ids) == 1, word


def test_assistant_mask_covers_assistant_turns_only(tokenizer):
    for chat in CHATS:
        out = tokenizer.apply_chat_template(chat, return_assistant_tokens_mask=True, return_dict=True)
        ids, mask = out["input_ids"], out["assistant_masks"]
        assert len(ids) == len(mask)
        masked = tokenizer.decode([i for i, m in zip(ids, mask) if m])
        unmasked = tokenizer.decode([i for i, m in zip(ids, mask) if not m])
        assistant = [m["content"] for m in chat if m["role"] == "assistant"]
        assert masked == "".join(a + IM_END for a in assistant)  # the stop token is trained
        for m in chat:
            if m["role"] != "assistant":
                assert m["content"] in unmasked
        assert "assistant\n" in unmasked and "<|im_start|>" not in masked
        # Generation-time prompt is a token prefix of the training sequence: RL and SFT see the same ids.
        prompt = tokenizer.apply_chat_template(chat[:-1], add_generation_prompt=True, return_dict=True)
        prompt = prompt["input_ids"]
        assert prompt == ids[: len(prompt)]
        assert mask[len(prompt) - 1] == 0 and all(mask[len(prompt) : -1]) and mask[-1] == 0


def test_generate_and_train_step(tokenizer, model):
    torch.manual_seed(0)
    prompt = tokenizer.apply_chat_template(
        CHATS[0][:2], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = model.generate(**prompt, max_new_tokens=6, do_sample=True)
    new = out[0, prompt["input_ids"].shape[1] :]
    assert 1 <= new.numel() <= 6
    assert isinstance(tokenizer.decode(new), str)

    texts = [tokenizer.apply_chat_template(c, tokenize=False) for c in CHATS]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    model.train()
    loss = model(**batch, labels=labels).loss
    assert math.isfinite(loss.item()) and loss.item() > 0
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.model.embed_tokens.weight.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)
    model.eval()


def test_build_is_deterministic_and_cli_matches(model_dir, tmp_path, capsys):
    from gcd_trl.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["tiny-model", "--output_dir", str(tmp_path / "cli"), "--seed", "0"])
    assert exc.value.code == 0
    assert "parameters" in capsys.readouterr().out
    expected = _hashes(model_dir)
    assert {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    } <= set(expected)
    assert _hashes(tmp_path / "cli") == expected

    other = _hashes(build_tiny_model(tmp_path / "seed1", seed=1))
    assert other["model.safetensors"] != expected["model.safetensors"]
    assert other["tokenizer.json"] == expected["tokenizer.json"]


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(ValueError, match="vocab_size"):
        build_tiny_model(tmp_path / "a", vocab_size=100)
    with pytest.raises(ValueError, match="hidden_size"):
        build_tiny_model(tmp_path / "b", hidden_size=100)
    with pytest.raises(FileNotFoundError, match="no_such_corpus"):
        build_tiny_model(tmp_path / "c", corpus=tmp_path / "no_such_corpus.txt")


@pytest.mark.filterwarnings("ignore:`gradient_checkpointing` is deprecated:FutureWarning")  # TRL's default
def test_trl_sft_assistant_only_loss(model_dir, tokenizer, tmp_path):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer
    from trl.chat_template_utils import is_chat_template_stop_token_trained

    assert is_chat_template_stop_token_trained(tokenizer)
    args = SFTConfig(
        output_dir=str(tmp_path / "sft"),
        max_steps=2,
        per_device_train_batch_size=2,
        learning_rate=1e-3,
        assistant_only_loss=True,
        use_cpu=True,
        bf16=False,
        report_to="none",
        logging_steps=1,
        save_strategy="no",
        dataloader_num_workers=0,
        seed=0,
    )
    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(model_dir),
        args=args,
        processing_class=tokenizer,
        train_dataset=Dataset.from_list([{"messages": c} for c in CHATS * 2]),
    )
    # The collated labels keep exactly the assistant turns (content + <|im_end|>).
    batch = trainer.data_collator([trainer.train_dataset[0]])
    kept = batch["labels"][0][batch["labels"][0] != -100].tolist()
    assistant = [m["content"] for m in CHATS[0] if m["role"] == "assistant"]
    assert tokenizer.decode(kept) == "".join(a + IM_END for a in assistant)

    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert trainer.state.global_step == 2 and len(losses) == 2
    assert all(math.isfinite(v) for v in losses)


def test_entity_tokens_make_each_alfworld_entity_one_token(tmp_path):
    from transformers import AutoTokenizer

    from gcd_trl.tiny_model import entity_tokens

    out = build_tiny_model(tmp_path / "ent", with_entity_tokens=True)
    tok = AutoTokenizer.from_pretrained(out)
    plain = AutoTokenizer.from_pretrained(build_tiny_model(tmp_path / "plain"))
    assert len(tok) == len(plain) + len(entity_tokens())
    text = "On the shelf 1, you see a pen 2.\nActions: 'go to shelf 10', 'take pen 2 from shelf 1', 'go to shelf 41'"
    ids = tok(text, add_special_tokens=False).input_ids
    pieces = tok.convert_ids_to_tokens(ids)
    assert pieces.count(" shelf 1") == 2 and " shelf 10" in pieces and pieces.count(" pen 2") == 2
    assert len(ids) < 0.8 * len(plain(text, add_special_tokens=False).input_ids)
    # every text round-trips, whatever the numbers (" shelf 41" is past the range: split, still exact)
    assert tok.decode(ids) == text
    chat = CHATS[0]
    rendered = tok.apply_chat_template(chat, tokenize=False)
    assert tok.decode(tok(rendered, add_special_tokens=False).input_ids) == rendered
    mask = tok.apply_chat_template(chat, return_assistant_tokens_mask=True, return_dict=True)
    answer = tok.decode([i for i, m in zip(mask["input_ids"], mask["assistant_masks"]) if m])
    assert "<action>take mug 2 from countertop 1</action>" in answer


@pytest.mark.parametrize("shape,params", [("qwen2.5-1.5b", 1_543_714_304), ("qwen2.5-7b", 7_615_616_512)])
def test_real_shapes_have_the_hub_models_sizes(shape, params):
    """The configs of `--shape`: the Hub models' layer count, sizes, heads and vocabulary (1.54B and 7.62B
    parameters, counted on the meta device without allocating them)."""
    import torch
    from transformers import Qwen2ForCausalLM

    from gcd_trl.tiny_model import SHAPES, parameters_of, shape_config

    config = shape_config(shape, pad_id=0, eos_id=1, tokens=5000)
    assert config.num_hidden_layers == 28 and config.vocab_size == SHAPES[shape]["vocab_size"]
    assert config.hidden_size // config.num_attention_heads == 128
    with torch.device("meta"):
        model = Qwen2ForCausalLM(config)
    assert sum(p.numel() for p in model.parameters()) == params == parameters_of(config)
    with pytest.raises(ValueError, match="unknown shape"):
        shape_config("qwen9", 0, 1, 10)


def test_shape_build_pads_the_embedding_and_saves_bf16(tmp_path, monkeypatch):
    """The `--shape` build path on a small stand-in shape: the project's tokenizer, the embedding padded
    to the shape's vocabulary, bfloat16 weights, loadable and able to generate."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import gcd_trl.tiny_model as tm

    small = dict(
        tm.SHAPES["qwen2.5-7b"],
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        vocab_size=9000,
    )
    monkeypatch.setitem(tm.SHAPES, "small", small)
    out = tm.build_tiny_model(tmp_path / "m", shape="small", with_entity_tokens=True)
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out, dtype="auto")
    assert model.config.vocab_size == 9000 > len(tok)
    assert model.get_input_embeddings().weight.shape == (9000, 128)
    assert model.dtype == torch.bfloat16 and not model.config.tie_word_embeddings
    assert tm.count_parameters(out) == tm.parameters_of(model.config)
    ids = tok("go to shelf 1", return_tensors="pt").input_ids
    assert model.generate(ids, max_new_tokens=3, do_sample=False).shape[1] == ids.shape[1] + 3
