"""The generation layer: HF generation (batched, left-padded, greedy = the trainer's), the OpenAI-compatible
backend against a real HTTP server on 127.0.0.1, and the vLLM backend's clear error without vLLM."""

from __future__ import annotations

import importlib.util
import math
import time

import pytest

from gcd_trl.generation import (
    Generation,
    GenerationError,
    Generator,
    HFGenerator,
    OpenAIGenerator,
    SamplingSettings,
    chat_prompt_ids,
    to_chat,
)
from openai_server import Fault, openai_server_fixture  # noqa: F401 (the fixture)

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

PROMPTS = [
    "Your task is to: put a mug in the coffee machine. You are in the middle of a room.",
    "look",
    "Your admissible actions of the current situation are: ['go to desk 1', 'inventory', 'look'].",
]


@pytest.fixture(scope="module")
def hf(tiny_model_dir):
    return HFGenerator.from_pretrained(str(tiny_model_dir), SamplingSettings(max_new_tokens=12), device="cpu")


def test_sampling_settings_are_checked():
    assert SamplingSettings().greedy
    for bad in (dict(max_new_tokens=0), dict(temperature=-1), dict(top_p=0), dict(top_k=-1)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            SamplingSettings(**bad)


def test_chat_prompt_ids_is_the_chat_template_with_generation_prompt(hf):
    tok = hf.tokenizer
    ids = chat_prompt_ids(tok, "hello")
    text = tok.decode(ids)
    assert text == tok.apply_chat_template(to_chat("hello"), add_generation_prompt=True, tokenize=False)
    assert text.endswith("<|im_start|>assistant\n") and "hello" in text


def test_hf_batched_left_padded_greedy_equals_one_by_one(hf):
    assert isinstance(hf, Generator)
    batch = hf.generate(PROMPTS)
    single = [hf.generate([p])[0] for p in PROMPTS]
    assert len(batch) == len(PROMPTS)
    for b, s, p in zip(batch, single, PROMPTS):
        assert b.prompt_ids == s.prompt_ids == chat_prompt_ids(hf.tokenizer, p)
        assert b.completion_ids == s.completion_ids and b.text == s.text
        assert 1 <= len(b.completion_ids) <= 12
        eos = set(hf.eos_token_ids)
        assert b.truncated == (b.completion_ids[-1] not in eos)
        assert not eos & set(b.completion_ids[:-1]), "nothing is kept after the first eos"
    assert hf.generate([]) == []
    small = HFGenerator(hf.model, hf.tokenizer, hf.sampling, batch_size=2)
    assert [g.completion_ids for g in small.generate(PROMPTS)] == [g.completion_ids for g in batch]


def test_hf_logprobs_are_the_models_and_sampling_is_seeded(hf):
    import torch

    gen = HFGenerator(hf.model, hf.tokenizer, SamplingSettings(max_new_tokens=6), return_logprobs=True)
    out = gen.generate(PROMPTS[:2])
    for g in out:
        assert len(g.logprobs) == len(g.completion_ids)
        ids = torch.tensor([g.prompt_ids + g.completion_ids])
        with torch.no_grad():
            logits = hf.model(ids).logits[0, len(g.prompt_ids) - 1 : -1].float().log_softmax(-1)
        want = logits.gather(-1, torch.tensor(g.completion_ids)[:, None]).squeeze(-1).tolist()
        assert all(math.isclose(a, b, abs_tol=1e-3) for a, b in zip(g.logprobs, want))
        assert all(a >= max(row) - 1e-4 for a, row in zip(g.logprobs, logits.tolist())), "greedy = argmax"
    sampled = SamplingSettings(max_new_tokens=8, temperature=1.0, seed=7)
    a = HFGenerator(hf.model, hf.tokenizer, sampled).generate(PROMPTS)
    b = HFGenerator(hf.model, hf.tokenizer, sampled).generate(PROMPTS)
    assert [g.completion_ids for g in a] == [g.completion_ids for g in b]


def test_hf_backend_equals_the_trainers_greedy_generation(tiny_model_dir, tmp_path):
    """The same prompts through AgentGRPOTrainer's `_generate_turn` (TRL's generation path) and through
    HFGenerator: the same prompt ids, completion ids, text and truncation."""
    from datasets import Dataset

    from gcd_trl.rollout.settings import EnvArguments
    from gcd_trl.trainers.grpo import AgentGRPOTrainer
    from gcd_trl.trainers.grpo_config import AgentGRPOConfig

    args = AgentGRPOConfig(
        output_dir=str(tmp_path),
        use_cpu=True,
        bf16=False,
        report_to="none",
        num_generations=2,
        tasks_per_round=2,
        max_completion_length=16,
        max_tokens_per_microbatch=2048,
        save_strategy="no",
        disable_tqdm=True,
        generation_kwargs={"do_sample": False},
    )
    task = {"env": "alfworld", "split": "all", "game": str(tmp_path), "task_type": 1}
    trainer = AgentGRPOTrainer(
        str(tiny_model_dir),
        args=args,
        train_dataset=Dataset.from_list([task]),
        env_args=EnvArguments(environment="alfworld", split="all"),
    )
    try:
        theirs = trainer._generate_turn(PROMPTS)
        ours = HFGenerator(trainer.model, trainer.processing_class, SamplingSettings(max_new_tokens=16))
        mine = ours.generate(PROMPTS)
    finally:
        trainer.close()
    for t, m in zip(theirs, mine):
        assert t.prompt_ids == m.prompt_ids
        assert t.completion_ids == m.completion_ids
        assert t.text == m.text and t.truncated == m.truncated


def test_vllm_backend_says_how_to_install_it():
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here (covered by the GPU tests)")
    from gcd_trl.generation import VLLMGenerator

    with pytest.raises(ImportError, match=r"pip install -e '\.\[vllm\]'"):
        VLLMGenerator("some/model")


# ------------------------------------------------------------------------------------- OpenAI backend
def _gen(server, **kw) -> OpenAIGenerator:
    kw.setdefault("sampling", SamplingSettings(max_new_tokens=32, temperature=0.0, seed=3))
    return OpenAIGenerator(server.base_url, "agent-model", "GCD_TEST_NO_SUCH_KEY", **kw)


def test_openai_answers_in_order_concurrently_with_the_chat_request(openai_server):
    def answer(prompt, i):
        time.sleep(0.05)  # overlap the requests
        return f"<think>t</think><action>{prompt[::-1]}</action>"

    openai_server.answer = answer
    prompts = [f"prompt {i}" for i in range(12)]
    out = _gen(openai_server, concurrency=4).generate(prompts)
    assert [g.text for g in out] == [f"<think>t</think><action>{p[::-1]}</action>" for p in prompts]
    assert all(isinstance(g, Generation) and not g.truncated and g.logprobs is None for g in out)
    assert openai_server.completions == 12 and openai_server.max_in_flight > 1
    body = openai_server.bodies[0]
    assert body["messages"] == to_chat(body["messages"][0]["content"])
    assert body["model"] == "agent-model" and body["max_tokens"] == 32
    assert body["temperature"] == 0.0 and body["seed"] == 3 and "top_k" not in body


def test_openai_retries_then_raises_a_generation_error(openai_server):
    openai_server.answer = lambda prompt, i: "<think>t</think><action>look</action>"
    openai_server.script(Fault.rate_limit(0.01), Fault.server_error())
    gen = _gen(openai_server, max_retries=2, concurrency=1)
    assert gen.generate(["a"])[0].text.endswith("<action>look</action>")
    assert openai_server.requests == 3
    openai_server.reset_counts()
    gen = _gen(openai_server, max_retries=1, timeout=0.3, concurrency=1)
    openai_server.script(Fault.hang(2.0), Fault.hang(2.0))
    with pytest.raises(GenerationError, match="agent-model"):
        gen.generate(["a"])
    openai_server.script(Fault.malformed())
    with pytest.raises(GenerationError):
        _gen(openai_server, max_retries=0).generate(["b"])
    openai_server.script(Fault.empty())
    with pytest.raises(GenerationError, match="without choices"):
        _gen(openai_server, max_retries=0).generate(["c"])


def test_openai_logprobs_and_top_k(openai_server):
    openai_server.answer = lambda prompt, i: "go to desk 1"
    sampling = SamplingSettings(max_new_tokens=8, temperature=0.7, top_k=5)
    out = _gen(openai_server, sampling=sampling, return_logprobs=True).generate(["x"])
    assert out[0].logprobs == [-0.5] * 4
    body = openai_server.bodies[-1]
    assert body["logprobs"] is True and body["top_k"] == 5 and body["temperature"] == 0.7
