"""One generation layer for everyone: the trainer, the evaluation, the data builders and the judge.

A backend turns a list of user-message prompts into one `Generation` each, in order:

    gen = HFGenerator(model, tokenizer, SamplingSettings(max_new_tokens=256))
    outs = gen.generate(["...prompt..."])      # -> list[Generation]

Backends: `HFGenerator` (transformers `generate`, batched and left-padded), `VLLMGenerator` (`vllm.LLM`
offline, imported only when built), `OpenAIGenerator` (any OpenAI-compatible chat endpoint through the
`openai` client: a hosted model, `vllm serve`, `trl vllm-serve`). The trainer plugs TRL's own generation
(vLLM weight sync, colocate/server) into the same `Generator` protocol: `TrainerGenerator`, the one place
that calls TRL's private generation API.

The chat wrapping of a prompt (one user turn, the tokenizer's chat template with the generation prompt)
is defined once, in `to_chat` / `chat_prompt_ids`; the OpenAI backend sends `to_chat(prompt)` and the
server applies its own template.
"""

from __future__ import annotations

import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from gcd_trl.dist import max_over_processes


@dataclass
class Generation:
    """One completion of one prompt, as the generation backend returned it."""

    prompt_ids: list[int]
    completion_ids: list[int]
    text: str
    truncated: bool  # hit max_completion_length without an end-of-sequence token
    logprobs: list[float | None] | None = None  # sampling log-probs per completion token, when known


@runtime_checkable
class Generator(Protocol):
    """Anything that answers prompts: `generate(prompts)` returns one Generation per prompt, in order."""

    def generate(self, prompts: list[str]) -> list[Generation]: ...


def to_chat(prompt: str) -> list[dict[str, str]]:
    """The conversation a prompt is sent as: one user turn (the paper's prompts hold everything)."""
    return [{"role": "user", "content": prompt}]


def chat_prompt_ids(tokenizer: Any, prompt: str, **chat_template_kwargs: Any) -> list[int]:
    """The token ids a local model is prompted with: `to_chat(prompt)` through the tokenizer's chat
    template, with the assistant's generation prompt (what TRL's GRPOTrainer feeds its model)."""
    out = tokenizer.apply_chat_template(
        to_chat(prompt), add_generation_prompt=True, tokenize=True, return_dict=True, **chat_template_kwargs
    )
    ids = out["input_ids"]
    if ids and isinstance(ids[0], list):  # some tokenizers batch a single conversation
        ids = ids[0]
    return [int(i) for i in ids]


class GenerationError(RuntimeError):
    """A backend could not answer a prompt (after its own retries)."""


@dataclass
class SamplingSettings:
    """How completions are drawn. `temperature == 0` means greedy decoding (the evaluation default)."""

    max_new_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k filtering
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens!r} must be >= 1")
        if self.temperature < 0:
            raise ValueError(f"temperature={self.temperature!r} must be >= 0 (0 is greedy)")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p={self.top_p!r} must lie in (0, 1]")
        if self.top_k < 0:
            raise ValueError(f"top_k={self.top_k!r} must be >= 0 (0 disables it)")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    """Every id that ends a completion: the model's declared eos ids and the tokenizer's (as TRL does)."""
    declared = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = [] if declared is None else [declared] if isinstance(declared, int) else list(declared)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids = [tokenizer.eos_token_id, *ids]
    return ids


def _cut_at_eos(ids: list[int], eos: set[int]) -> tuple[list[int], bool]:
    """Keep the ids up to and including the first eos; the second value says no eos came (truncated)."""
    for i, t in enumerate(ids):
        if t in eos:
            return ids[: i + 1], False
    return ids, True


class HFGenerator:
    """transformers `generate` on a local model: prompts tokenized with the chat template, left-padded,
    generated in batches of `batch_size` (all at once by default). Greedy when temperature == 0; sampled
    runs are seeded per call (`seed + call index`). `return_logprobs` adds the log-prob of each generated
    token under the distribution it was drawn from (after temperature / top-p / top-k)."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        sampling: SamplingSettings | None = None,
        *,
        batch_size: int | None = None,
        return_logprobs: bool = False,
        chat_template_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} must be >= 1")
        self.model, self.tokenizer = model, tokenizer
        self.sampling = sampling or SamplingSettings()
        self.batch_size = batch_size
        self.return_logprobs = return_logprobs
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.eos_token_ids = _eos_ids(model, tokenizer)
        self._calls = 0

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str,
        sampling: SamplingSettings | None = None,
        *,
        dtype: str = "auto",
        device: str | None = None,
        revision: str | None = None,
        attn_implementation: str | None = None,
        trust_remote_code: bool = False,
        **kwargs: Any,
    ) -> HFGenerator:
        """Load a model directory or hub id (and its tokenizer) for generation."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(
            name_or_path, revision=revision, trust_remote_code=trust_remote_code
        )
        model = AutoModelForCausalLM.from_pretrained(
            name_or_path,
            revision=revision,
            dtype=dtype,
            attn_implementation=attn_implementation,
            trust_remote_code=trust_remote_code,
        )
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model.to(device).eval()
        return cls(model, tokenizer, sampling, **kwargs)

    def generation_config(self) -> Any:
        from transformers import GenerationConfig

        s = self.sampling
        kwargs: dict[str, Any] = dict(
            max_new_tokens=s.max_new_tokens,
            pad_token_id=self.tokenizer.pad_token_id,
            bos_token_id=self.tokenizer.bos_token_id,
            eos_token_id=self.eos_token_ids,
            disable_compile=True,
            return_dict_in_generate=True,
            output_scores=self.return_logprobs,
        )
        if s.greedy:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            kwargs.update(do_sample=True, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k or None)
        return GenerationConfig(**kwargs)

    def generate(self, prompts: list[str]) -> list[Generation]:
        if not prompts:
            return []
        ids = [chat_prompt_ids(self.tokenizer, p, **self.chat_template_kwargs) for p in prompts]
        size = self.batch_size or len(ids)
        out: list[Generation] = []
        for start in range(0, len(ids), size):
            out.extend(self.generate_ids(ids[start : start + size]))
        return out

    def generate_ids(self, prompt_ids: list[list[int]]) -> list[Generation]:
        """Generate for already tokenized prompts (one batch)."""
        import torch

        if not prompt_ids:
            return []
        model = self.model
        device = next(model.parameters()).device
        pad = self.tokenizer.pad_token_id
        width = max(len(p) for p in prompt_ids)
        input_ids = torch.tensor([[pad] * (width - len(p)) + list(p) for p in prompt_ids], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompt_ids], device=device)
        config = self.generation_config()
        self._calls += 1
        was_training, saved_config = model.training, model.generation_config
        model.eval()
        # the model's own generation_config would fill values left at global defaults (transformers<5)
        model.generation_config = config
        # sampling is seeded per call without touching the caller's random state
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            if not self.sampling.greedy:
                torch.manual_seed(self.sampling.seed + self._calls - 1)
            try:
                with torch.no_grad():
                    res = model.generate(input_ids=input_ids, attention_mask=mask, generation_config=config)
            finally:
                model.generation_config = saved_config
                model.train(was_training)
        new_ids = res.sequences[:, width:]
        completions = new_ids.tolist()
        logps = None
        if self.return_logprobs and res.scores:  # one step at a time: (batch, steps, vocab) can be huge
            logps = torch.stack(
                [
                    step.float().log_softmax(-1).gather(-1, new_ids[:, t, None]).squeeze(-1)
                    for t, step in enumerate(res.scores)
                ],
                dim=1,
            ).tolist()
        eos = set(self.eos_token_ids)
        cut = [_cut_at_eos(c, eos) for c in completions]
        texts = self.tokenizer.batch_decode([c for c, _ in cut], skip_special_tokens=True)
        return [
            Generation(
                list(p), c, text, truncated, None if logps is None else [float(x) for x in logps[i][: len(c)]]
            )
            for i, (p, (c, truncated), text) in enumerate(zip(prompt_ids, cut, texts))
        ]


class VLLMGenerator:
    """vLLM offline (`vllm.LLM`): prompts tokenized with the model's chat template (`chat_prompt_ids`),
    sent as token ids, one `llm.generate` call per batch. `llm_kwargs` go to `vllm.LLM` (e.g.
    `tensor_parallel_size`, `gpu_memory_utilization`, `max_model_len`, `dtype`). Needs a GPU and the
    `vllm` extra (`pip install -e '.[vllm]'`)."""

    def __init__(
        self,
        model: str,
        sampling: SamplingSettings | None = None,
        *,
        return_logprobs: bool = False,
        chat_template_kwargs: dict[str, Any] | None = None,
        **llm_kwargs: Any,
    ) -> None:
        try:
            from vllm import LLM
        except ImportError as err:
            raise ImportError(
                "the vLLM backend needs vllm: pip install -e '.[vllm]' (a CUDA machine)"
            ) from err
        self.sampling = sampling or SamplingSettings()
        self.return_logprobs = return_logprobs
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        llm_kwargs.setdefault("seed", self.sampling.seed)
        self.llm = LLM(model=model, **llm_kwargs)
        self.tokenizer = self.llm.get_tokenizer()

    def sampling_params(self) -> Any:
        from vllm import SamplingParams

        s = self.sampling
        return SamplingParams(
            n=1,
            max_tokens=s.max_new_tokens,
            temperature=s.temperature,  # 0: greedy
            top_p=s.top_p,
            top_k=s.top_k,  # 0: off (vLLM >= 0.22; TRL passes 0 too)
            seed=None if s.greedy else s.seed,
            logprobs=0 if self.return_logprobs else None,  # 0: the sampled token's log-prob only
        )

    def generate(self, prompts: list[str]) -> list[Generation]:
        if not prompts:
            return []
        ids = [chat_prompt_ids(self.tokenizer, p, **self.chat_template_kwargs) for p in prompts]
        outputs = self.llm.generate(
            [{"prompt_token_ids": p} for p in ids], sampling_params=self.sampling_params(), use_tqdm=False
        )
        out = []
        for p, request in zip(ids, outputs):
            o = request.outputs[0]
            logps = None
            if self.return_logprobs and o.logprobs is not None:
                logps = [step[t].logprob if t in step else None for t, step in zip(o.token_ids, o.logprobs)]
            out.append(Generation(p, list(o.token_ids), o.text, o.finish_reason == "length", logps))
        return out


class OpenAIGenerator:
    """Any OpenAI-compatible chat endpoint through the `openai` client. Requests run concurrently
    (`concurrency` threads); the client retries (429, 5xx, connection errors, with backoff) up to
    `max_retries` times, each attempt limited to `timeout` seconds. The API key is read from the
    environment variable `api_key_env` (never passed as a value); a local server without auth works with
    it unset. Token ids are not known here (`prompt_ids`/`completion_ids` stay empty)."""

    def __init__(
        self,
        base_url: str | None,
        model: str,
        api_key_env: str = "OPENAI_API_KEY",
        sampling: SamplingSettings | None = None,
        *,
        concurrency: int = 8,
        max_retries: int = 3,
        timeout: float = 60.0,
        return_logprobs: bool = False,
    ) -> None:
        import openai

        if concurrency < 1:
            raise ValueError(f"concurrency={concurrency!r} must be >= 1")
        self.model = model
        self.sampling = sampling or SamplingSettings()
        self.concurrency = concurrency
        self.return_logprobs = return_logprobs
        self.client = openai.OpenAI(
            base_url=base_url,
            api_key=os.environ.get(api_key_env) or "EMPTY",
            max_retries=max_retries,
            timeout=timeout,
        )
        self.stats = {"requests": 0, "truncated": 0}
        self._lock = threading.Lock()

    def _request(self, prompt: str) -> Generation:
        import openai

        s = self.sampling
        kwargs: dict[str, Any] = dict(
            model=self.model,
            messages=to_chat(prompt),
            max_tokens=s.max_new_tokens,
            temperature=s.temperature,
            top_p=s.top_p,
            seed=s.seed,
        )
        if s.top_k:
            kwargs["extra_body"] = {"top_k": s.top_k}  # vLLM's server accepts it; OpenAI has none
        if self.return_logprobs:
            kwargs["logprobs"] = True
        try:
            resp = self.client.chat.completions.create(**kwargs)
        except (openai.OpenAIError, ValueError) as err:  # ValueError: a body that is not JSON
            raise GenerationError(
                f"{self.model}: request failed after retries: {type(err).__name__}: {err}"
            ) from err
        if not resp.choices:
            raise GenerationError(f"{self.model}: the endpoint answered without choices")
        choice = resp.choices[0]
        text = choice.message.content or ""
        truncated = choice.finish_reason == "length"
        with self._lock:
            self.stats["requests"] += 1
            self.stats["truncated"] += truncated
        logps = None
        if self.return_logprobs and choice.logprobs is not None and choice.logprobs.content is not None:
            logps = [t.logprob for t in choice.logprobs.content]
        return Generation([], [], text, truncated, logps)

    def generate(self, prompts: list[str]) -> list[Generation]:
        if not prompts:
            return []
        if len(prompts) == 1 or self.concurrency == 1:
            return [self._request(p) for p in prompts]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(prompts))) as pool:
            return list(pool.map(self._request, prompts))


class TrainerGenerator:
    """TRL's generation machinery behind the `gcd_trl.generation.Generator` protocol.

    Every call into TRL's private generation API lives here (`_tokenize_prompts`, `_generate_single_turn`:
    transformers `generate` under `unwrap_model_for_generation`, or TRL's vLLM colocate/server backend with
    its weight sync), so a TRL upgrade touches one class. With several processes, calls are made in
    lockstep (the collector syncs its turn loop): backends whose generate is collective (vLLM server/TP
    colocate, ZeRO-3/FSDP) see the same number of calls, and vLLM, which slices its outputs by an equal
    per-process count, gets equal-size prompt lists.
    """

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer
        self._eos_and_pad = {*trainer.eos_token_ids, trainer._tokenizer.pad_token_id}

    @contextlib.contextmanager
    def _setting(
        self, vllm_field: str, vllm_value: Any, config_field: str, config_value: Any, restore: Any = None
    ):
        """Set a sampling setting of TRL's vLLM backend and of its HF generation config (and kwargs) inside
        the block; restore `restore` after it, or (None) the values they had."""
        t = self.trainer
        vllm = getattr(t, "vllm_generation", None) if t.use_vllm else None
        config = getattr(t, "generation_config", None)
        old_vllm = getattr(vllm, vllm_field) if vllm is not None and restore is None else restore
        old_config = getattr(config, config_field) if config is not None and restore is None else restore
        try:
            if vllm is not None:
                setattr(vllm, vllm_field, vllm_value)
            if config is not None:
                setattr(config, config_field, config_value)
                t.generation_kwargs[config_field] = config_value
            yield
        finally:
            if vllm is not None:
                setattr(vllm, vllm_field, old_vllm)
            if config is not None:
                setattr(config, config_field, old_config)
                t.generation_kwargs[config_field] = old_config

    @contextlib.contextmanager
    def max_new_tokens(self, limit: int | None):
        """Cap completions at `limit` tokens inside the block (GCD judge answers); None keeps the default."""
        if limit is None:
            yield
            return
        saved = self.trainer.max_completion_length
        with self._setting("max_completion_length", limit, "max_new_tokens", limit, restore=saved):
            yield

    def greedy(self) -> contextlib.AbstractContextManager:
        """Greedy decoding inside the block (evaluation), for the HF and the vLLM backends."""
        return self._setting("temperature", 0.0, "do_sample", False)

    def generate(self, prompts: list[str]) -> list[Generation]:
        t = self.trainer
        n = len(prompts)
        prompt_ids = t._tokenize_prompts([to_chat(p) for p in prompts])[0] if prompts else []
        prompt_ids = [list(ids) for ids in prompt_ids]
        target = n
        if t.accelerator.num_processes > 1:
            if t.use_vllm:
                target = max_over_processes(t.accelerator, n)
            elif n == 0:
                target = 1  # sharded models (ZeRO-3/FSDP) need every process in each forward
        tok = t._tokenizer
        dummy = [tok.pad_token_id if tok.bos_token_id is None else tok.bos_token_id]
        padded = prompt_ids + [list(prompt_ids[0]) if prompt_ids else dummy] * (target - n)
        if not padded:
            return []
        completion_ids, logprobs = t._generate_single_turn(padded, None, {}, 1)
        completion_ids = [list(c) for c in completion_ids[:n]]
        texts = t.processing_class.batch_decode(completion_ids, skip_special_tokens=True) if n else []
        out = []
        for i in range(n):
            ids = completion_ids[i]
            truncated = not ids or ids[-1] not in self._eos_and_pad
            out.append(
                Generation(prompt_ids[i], ids, texts[i], truncated, None if logprobs is None else logprobs[i])
            )
        return out
