"""The external judge: any OpenAI-compatible chat endpoint (a hosted model, or a local `vllm serve`).

    judge = ExternalJudge(model="deepseek-chat", base_url="https://api.deepseek.com/v1",
                          api_key_env="DEEPSEEK_API_KEY", votes=3, min_agree=2, cache_dir="judge_cache")
    results = judge.judge_records(step_records)     # {record_key: {"label", "votes", "critiques", ...}}
    judge.stats()                                   # requests, cache_hits, failures by kind, tokens, budget

Each step gets `votes` answers to the critic prompt (one request with `n=votes`, topped up with more
requests when a server returns fewer choices; or `vote_mode="repeat"`: one request per answer). A label
is kept when at least `min_agree` answers give it (and more than give the other), else the step stays
unlabelled. What is never allowed to happen: an exception into training. Every fault (429 / 5xx /
timeouts after the client's own retries, an unreachable endpoint, a malformed body, a spent budget) is
counted by kind and the step comes back `failed`, so the caller falls back to the rules.

Costs are bounded and paid once:
- `requests` counts HTTP requests actually sent (an httpx event hook on the client the `openai` library
  uses, so its retries count too); `max_requests` and `max_tokens_budget` (prompt + completion tokens
  as the endpoint reports them) stop new requests for the rest of the run once reached.
- Answers are cached on disk, one JSON file per request key (model, messages, sampling settings; never
  the endpoint's key), written atomically the moment they arrive: a kill loses nothing received, and a
  rerun, a resume or a second process reads them back instead of paying again.
- After `down_after` consecutive connection-type failures the endpoint counts as down for the rest of
  the call (its remaining steps fail fast as `endpoint_down`); the next call tries again.
- `round_timeout` bounds one `judge_prompts` call as a whole (a slow endpoint costs up to `timeout` x
  (1 + retries) per request, one round's worth of them adds up to minutes): at the deadline the steps
  still waiting come back failed as `round_deadline` and the rules stand in; requests not sent by then are
  never sent, and answers still in flight are cached when they arrive (a later round or resume reads them).
The API key is read from the environment variable named by `api_key_env` and goes nowhere else.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import os
import queue
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from gcd_trl import files
from gcd_trl.gcd.judge import parse_judgement, render_judge_prompt
from gcd_trl.gcd.labels import record_key
from gcd_trl.generation import Generation, to_chat

log = logging.getLogger(__name__)

VOTE_MODES = ("n", "repeat")
# failure kinds that mean "the endpoint is not answering" (they trip the endpoint-down switch)
_DOWN_KINDS = ("connection", "timeout", "server_error", "rate_limit")


class DiskCache:
    """Answers by request key: one JSON file per key under `root` (sharded by the key's first 2 chars),
    replaced atomically, so readers never see half a file and a kill loses only the request in flight."""

    def __init__(self, root: str | os.PathLike | None) -> None:
        self.root = Path(root).expanduser() if root else None
        self._mem: dict[str, list[str]] = {}
        self._lock = threading.Lock()

    def _path(self, key: str) -> Path:
        assert self.root is not None
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> list[str]:
        with self._lock:
            if key in self._mem:
                return list(self._mem[key])
        answers: list[str] = []
        if self.root is not None:
            try:
                data = json.loads(self._path(key).read_text(encoding="utf-8"))
                answers = [a for a in data.get("answers", []) if isinstance(a, str)]
            except (FileNotFoundError, json.JSONDecodeError, AttributeError, OSError):
                answers = []
        with self._lock:
            self._mem[key] = answers
        return list(answers)

    def extend(self, key: str, answers: Sequence[str], meta: Mapping[str, Any]) -> list[str]:
        """Add answers to a key (after what another process may have written meanwhile) and persist."""
        with self._lock:
            current = self._mem.get(key, [])
        if self.root is not None:
            on_disk = DiskCache(self.root).get(key)  # another process may have written since we read
            if len(on_disk) > len(current):
                current = on_disk
        merged = list(current) + list(answers)
        with self._lock:
            self._mem[key] = merged
        if self.root is not None:
            files.write_json_atomic(self._path(key), {**meta, "answers": merged}, fsync=True, indent=None)
        return merged


def request_key(model: str, messages: list[dict[str, str]], sampling: Mapping[str, Any]) -> str:
    """The cache key of a request: a hash of the model, the messages and the sampling settings."""
    blob = json.dumps({"model": model, "messages": messages, "sampling": dict(sampling)}, sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def aggregate_votes(scores: Sequence[int | None], min_agree: int) -> int | None:
    """The label that at least `min_agree` answers give and more answers give than the other; else None."""
    ones = sum(s == 1 for s in scores)
    zeros = sum(s == 0 for s in scores)
    if ones >= min_agree and ones > zeros:
        return 1
    if zeros >= min_agree and zeros > ones:
        return 0
    return None


def failure_kind(err: BaseException) -> str:
    """A short name for why a request failed, for the failure counters."""
    import openai

    if isinstance(err, openai.APITimeoutError):
        return "timeout"
    if isinstance(err, openai.APIConnectionError):
        return "connection"
    if isinstance(err, openai.RateLimitError):
        return "rate_limit"
    if isinstance(err, openai.AuthenticationError | openai.PermissionDeniedError):
        return "auth"
    if isinstance(err, openai.APIStatusError):
        return "server_error" if err.status_code >= 500 else "bad_request"
    if isinstance(
        err, ValueError | openai.APIResponseValidationError | KeyError | TypeError | AttributeError
    ):
        return "malformed"  # a body that is not JSON (json.JSONDecodeError) or not a completion
    return "other"


def map_with_deadline(
    fn: Callable[[Any], Any], items: Sequence[Any], workers: int, timeout: float | None
) -> list[tuple[bool, Any]]:
    """`fn` over `items` on up to `workers` threads: (finished, result) per item, in order; items not
    finished within `timeout` seconds (None: no limit) come back (False, None). Items not started by then
    are never started; the ones in flight finish in the background on daemon threads, so they hold up
    neither the caller nor the interpreter's exit (a ThreadPoolExecutor joins its threads)."""
    results: list[tuple[bool, Any]] = [(False, None)] * len(items)
    todo: queue.SimpleQueue[int] = queue.SimpleQueue()
    for i in range(len(items)):
        todo.put(i)
    lock, stop, all_done = threading.Lock(), threading.Event(), threading.Event()
    left = [len(items)]
    errors: list[BaseException] = []

    def work() -> None:
        while not stop.is_set():
            try:
                i = todo.get_nowait()
            except queue.Empty:
                return
            try:
                value = fn(items[i])
            except BaseException as err:  # re-raised in the caller, as ThreadPoolExecutor.map does
                with lock:
                    errors.append(err)
                all_done.set()
                return
            with lock:
                if not stop.is_set():
                    results[i] = (True, value)
                left[0] -= 1
                if left[0] == 0:
                    all_done.set()

    if not items:
        return []
    for _ in range(min(workers, len(items))):
        threading.Thread(target=work, name="external-judge", daemon=True).start()
    all_done.wait(timeout)
    with lock:
        stop.set()
        if errors:
            raise errors[0]
        return list(results)


class ExternalJudge:
    """Labels step records with an OpenAI-compatible endpoint; see the module docstring."""

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        *,
        api_key_env: str = "OPENAI_API_KEY",
        votes: int = 3,
        min_agree: int = 2,
        vote_mode: str = "n",
        temperature: float = 0.7,
        top_p: float = 1.0,
        max_tokens: int = 1024,
        timeout: float = 60.0,
        max_retries: int = 2,
        concurrency: int = 8,
        cache_dir: str | os.PathLike | None = None,
        max_requests: int | None = None,
        max_tokens_budget: int | None = None,
        template: str | None = None,
        down_after: int = 3,
        round_timeout: float | None = None,
    ) -> None:
        if not model:
            raise ValueError("ExternalJudge: model is required")
        if votes < 1 or not 1 <= min_agree <= votes:
            raise ValueError(
                f"ExternalJudge: need votes >= 1 and 1 <= min_agree <= votes, got {votes}, {min_agree}"
            )
        if vote_mode not in VOTE_MODES:
            raise ValueError(f"ExternalJudge: vote_mode {vote_mode!r} is not one of {VOTE_MODES}")
        if concurrency < 1:
            raise ValueError(f"ExternalJudge: concurrency must be >= 1, got {concurrency}")
        self.model, self.base_url = model, base_url
        self.api_key_env = api_key_env
        self.votes, self.min_agree, self.vote_mode = votes, min_agree, vote_mode
        self.sampling = {"temperature": temperature, "top_p": top_p, "max_tokens": max_tokens}
        self.timeout, self.max_retries, self.concurrency = timeout, max_retries, concurrency
        self.max_requests, self.max_tokens_budget = max_requests, max_tokens_budget
        self.template = template
        self.down_after = down_after
        self.round_timeout = round_timeout
        self.cache = DiskCache(cache_dir)
        self._lock = threading.Lock()
        self._client: Any = None
        self._client_lock = threading.Lock()
        # counters over the run (state_dict keeps them across a resume, so the budget is per run)
        self.requests = 0
        self.cache_hits = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.failures: collections.Counter[str] = collections.Counter()
        self.unparsable_answers = 0
        self._consecutive_down = 0
        self._in_flight = 0  # requests reserved against the budget and not yet sent
        self._tls = threading.local()
        self._budget_warned = False

    @classmethod
    def from_args(
        cls, args: Any, cache_dir: str | os.PathLike | None = None, template: str | None = None
    ) -> ExternalJudge:
        """Build from a `GCDArguments` (or anything with its judge_* fields)."""
        return cls(
            model=args.judge_model,
            base_url=args.judge_base_url,
            api_key_env=args.judge_api_key_env,
            votes=args.judge_votes,
            min_agree=args.judge_min_agree,
            vote_mode=args.judge_vote_mode,
            temperature=args.judge_temperature,
            top_p=args.judge_top_p,
            max_tokens=args.judge_max_tokens,
            timeout=args.judge_timeout,
            max_retries=args.judge_max_retries,
            concurrency=args.judge_concurrency,
            cache_dir=cache_dir if cache_dir is not None else args.judge_cache_dir,
            max_requests=args.judge_max_requests,
            max_tokens_budget=args.judge_token_budget,
            template=template,
            round_timeout=getattr(args, "judge_round_timeout", None),
        )

    # ---- the client ---------------------------------------------------------------------------------
    def _on_request(self, request: Any) -> None:
        with self._lock:
            self.requests += 1
            if getattr(self._tls, "reserved", False):  # the reserved request is sent: it now counts
                self._tls.reserved = False
                self._in_flight -= 1

    def client(self) -> Any:
        """The openai client (built on first use), with our request-counting hook on its HTTP client."""
        with self._client_lock:  # worker threads may ask at once: build one client
            if self._client is None:
                self._client = self._build_client()
        return self._client

    def _build_client(self) -> Any:
        import openai

        key = os.environ.get(self.api_key_env)
        if not key:
            log.warning(
                "external judge: environment variable %s is not set; sending requests without an API key",
                self.api_key_env,
            )
            key = "EMPTY"  # local servers (vllm serve) accept any key
        http_cls = getattr(openai, "DefaultHttpx2Client", None) or openai.DefaultHttpxClient
        http = http_cls(event_hooks={"request": [self._on_request], "response": []})
        return openai.OpenAI(
            api_key=key,
            base_url=self.base_url,
            timeout=self.timeout,
            max_retries=self.max_retries,
            http_client=http,
        )

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    # ---- budget -------------------------------------------------------------------------------------
    def budget_spent(self) -> str | None:
        """Why no new request may be sent ("requests" / "tokens"), or None."""
        if self.max_requests is not None and self.requests + self._in_flight >= self.max_requests:
            return "requests"
        if (
            self.max_tokens_budget is not None
            and self.prompt_tokens + self.completion_tokens >= self.max_tokens_budget
        ):
            return "tokens"
        return None

    # ---- one prompt ---------------------------------------------------------------------------------
    def _fail(self, kind: str) -> tuple[None, str]:
        with self._lock:
            self.failures[kind] += 1
            if kind in _DOWN_KINDS:
                self._consecutive_down += 1
        return None, kind

    def _query(self, prompt: str, n: int, sampling: Mapping[str, Any]) -> tuple[list[str] | None, str | None]:
        """`n` answers to one prompt (from the cache first), or (None, failure kind)."""
        messages = to_chat(prompt)
        key = request_key(self.model, messages, sampling)
        answers = self.cache.get(key)
        if len(answers) >= n:
            with self._lock:
                self.cache_hits += 1
            return answers[:n], None
        attempts = 0
        while len(answers) < n:
            with self._lock:
                down = self._consecutive_down >= self.down_after
            if down:
                return self._fail("endpoint_down")
            with self._lock:  # reserve the request, so concurrent threads cannot overshoot the budget
                spent = self.budget_spent()
                if not spent:
                    self._in_flight += 1
                    self._tls.reserved = True
            if spent:
                if not self._budget_warned:
                    self._budget_warned = True
                    log.warning("external judge: %s budget spent; falling back to the rules", spent)
                return self._fail("budget")
            need = n - len(answers)
            ask = need if self.vote_mode == "n" else 1
            attempts += 1
            if attempts > n + 1:  # the server keeps returning no choices
                return self._fail("malformed")
            try:
                kwargs: dict[str, Any] = dict(sampling)
                if ask > 1:
                    kwargs["n"] = ask
                out = self.client().chat.completions.create(model=self.model, messages=messages, **kwargs)
                texts = [c.message.content for c in out.choices]
                if out.usage is not None:
                    with self._lock:
                        self.prompt_tokens += int(out.usage.prompt_tokens or 0)
                        self.completion_tokens += int(out.usage.completion_tokens or 0)
            except Exception as err:  # never into training: count it and let the caller fall back
                kind = failure_kind(err)
                log.debug("external judge request failed (%s): %s", kind, type(err).__name__)
                return self._fail(kind)
            finally:
                with self._lock:
                    if getattr(self._tls, "reserved", False):  # never reached the HTTP layer
                        self._tls.reserved = False
                        self._in_flight -= 1
            texts = [t for t in texts if isinstance(t, str)]
            if not texts:
                continue
            with self._lock:
                self._consecutive_down = 0
            meta = {"model": self.model, "sampling": dict(sampling)}
            answers = self.cache.extend(key, texts[:need], meta)
        return answers[:n], None

    # ---- public API -----------------------------------------------------------------------------------
    def complete(
        self, prompts: Sequence[str], n: int = 1, sampling: Mapping[str, Any] | None = None
    ) -> list[list[str] | None]:
        """`n` answers per prompt (None where the request failed), concurrently, cache first."""
        sampling = dict(sampling or self.sampling)
        with self._lock:
            self._consecutive_down = 0
        if not prompts:
            return []
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(prompts))) as pool:
            results = list(pool.map(lambda p: self._query(p, n, sampling)[0], prompts))
        return results

    def judge_prompts(self, prompts: Sequence[str], progress: bool = False) -> list[dict[str, Any]]:
        """Vote on critic prompts: {"label", "votes", "critiques", "failed", "error"} per prompt. `progress`:
        a bar on stderr, steps judged / total (offline labelling sends thousands of requests)."""
        sampling = dict(self.sampling)
        with self._lock:
            self._consecutive_down = 0
        if not prompts:
            return []

        def one(prompt: str) -> dict[str, Any]:
            answers, error = self._query(prompt, self.votes, sampling)
            if answers is None:
                return {"label": None, "votes": [], "critiques": [], "failed": True, "error": error}
            judgements = [parse_judgement(a) for a in answers]
            scores = [j.score for j in judgements]
            unparsable = sum(s is None for s in scores)
            if unparsable:
                with self._lock:
                    self.unparsable_answers += unparsable
                    self.failures["no_boxed"] += unparsable
            return {
                "label": aggregate_votes(scores, self.min_agree),
                "votes": scores,
                "critiques": [{"source": "external", **j.to_dict()} for j in judgements],
                "failed": False,
                "error": None,
            }

        from tqdm.auto import tqdm

        bar = tqdm(total=len(prompts), desc="judge", unit="step", file=sys.stderr, disable=not progress)

        def counted(prompt: str) -> dict[str, Any]:
            result = one(prompt)
            with self._lock:
                bar.update(1)
            return result

        results = []
        with bar:
            for finished, result in map_with_deadline(counted, prompts, self.concurrency, self.round_timeout):
                if not finished:  # past the round's deadline: the rules stand in for this step
                    self._fail("round_deadline")
                    result = {
                        "label": None,
                        "votes": [],
                        "critiques": [],
                        "failed": True,
                        "error": "round_deadline",
                    }
                results.append(result)
        failed = [r["error"] for r in results if r["failed"]]
        if failed:
            by_kind = collections.Counter(failed)
            log.warning(
                "external judge: %d of %d steps got no answer and fall back to the rules (%s)",
                len(failed),
                len(results),
                ", ".join(f"{k}: {v}" for k, v in sorted(by_kind.items())),
            )
        return results

    def judge_records(
        self, records: Sequence[Mapping[str, Any]], progress: bool = False
    ) -> dict[tuple, dict[str, Any]]:
        """Vote on each agent step record; results keyed by `labels.record_key(record)` for `label_records`."""
        steps = [r for r in records if r.get("kind", "agent") == "agent"]
        prompts = [render_judge_prompt(r, self.template) for r in steps]
        return {record_key(r): res for r, res in zip(steps, self.judge_prompts(prompts, progress))}

    def stats(self) -> dict[str, Any]:
        """The counters, for metrics and the `judge label` summary."""
        with self._lock:
            return {
                "requests": self.requests,
                "cache_hits": self.cache_hits,
                "failures": dict(sorted(self.failures.items())),
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
                "budget_spent": self.budget_spent(),
            }

    def metrics(self, prefix: str = "judge/external_") -> dict[str, float]:
        """The counters as flat float metrics (totals over the run)."""
        s = self.stats()
        out = {
            f"{prefix}requests": float(s["requests"]),
            f"{prefix}cache_hits": float(s["cache_hits"]),
            f"{prefix}tokens": float(s["prompt_tokens"] + s["completion_tokens"]),
            f"{prefix}budget_spent": float(s["budget_spent"] is not None),
            f"{prefix}failures": float(sum(v for k, v in s["failures"].items() if k != "no_boxed")),
        }
        for kind, count in s["failures"].items():
            out[f"{prefix}failures_{kind}"] = float(count)
        return out

    def state_dict(self) -> dict[str, Any]:
        """Counters to save with a checkpoint, so a resumed run keeps one budget."""
        with self._lock:
            return {
                "requests": self.requests,
                "cache_hits": self.cache_hits,
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
                "failures": dict(self.failures),
                "unparsable_answers": self.unparsable_answers,
            }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        with self._lock:
            self.requests = int(state.get("requests", 0))
            self.cache_hits = int(state.get("cache_hits", 0))
            self.prompt_tokens = int(state.get("prompt_tokens", 0))
            self.completion_tokens = int(state.get("completion_tokens", 0))
            self.failures = collections.Counter(
                {str(k): int(v) for k, v in state.get("failures", {}).items()}
            )
            self.unparsable_answers = int(state.get("unparsable_answers", 0))


class ExternalGenerator:
    """The external endpoint as a `gcd_trl.generation.Generator` (e.g. for golden rules): one answer per
    prompt, through the judge's client, cache, budget and counters. A failed request gives empty text."""

    def __init__(self, judge: ExternalJudge, sampling: Mapping[str, Any] | None = None) -> None:
        self.judge = judge
        self.sampling = dict(sampling or judge.sampling)

    def generate(self, prompts: list[str]) -> list[Generation]:
        outs = self.judge.complete(prompts, n=1, sampling=self.sampling)
        return [
            Generation(prompt_ids=[], completion_ids=[], text=(o[0] if o else ""), truncated=False)
            for o in outs
        ]


def advice_from_results(
    results: Mapping[tuple, Mapping[str, Any]] | Sequence[Mapping[str, Any]],
) -> list[str]:
    """The <advise> sentences of external answers that agree with the step's kept label."""
    items = results.values() if isinstance(results, Mapping) else results
    out = []
    for res in items:
        label = res.get("label")
        if label is None:
            continue
        for c in res.get("critiques", []):
            if c.get("score") == label and c.get("advise"):
                out.append(str(c["advise"]))
    return out


def label_with_judge(
    records: Sequence[Mapping[str, Any]],
    settings: Any,
    template: str,
    cache_dir: str | os.PathLike,
    progress: bool = False,
) -> tuple[list[dict], dict[str, Any]]:
    """Label step records offline (`gcd-trl judge label`): the rules, and with `settings.judge_model` the
    external judge's votes (`judge_labels` mode; "both" falls back to the rules without a judge), with a
    progress bar on stderr when `progress`. Returns the labelled records and a summary: label counts,
    requests, cache hits, failures, fallbacks."""
    from gcd_trl.gcd.labels import label_counts, label_records

    mode = settings.judge_labels
    results: dict = {}
    stats: dict[str, Any] = {"requests": 0, "cache_hits": 0, "failures": {}}
    if settings.judge_model and mode in ("external", "both"):
        judge = ExternalJudge.from_args(settings, cache_dir=cache_dir, template=template)
        judge.round_timeout = None  # offline there is no round to keep short: every step waits its answer
        try:
            results = judge.judge_records(records, progress=progress)
        finally:
            judge.close()
        stats = judge.stats()
    elif mode == "both":
        mode = "rules"
    labelled = label_records(records, results, mode=mode)
    counts = label_counts(labelled)
    summary = {
        "steps": counts["steps"],
        "good": counts["good"],
        "bad": counts["bad"],
        "unlabelled": counts["unlabelled"],
        "requests": stats["requests"],
        "cache_hits": stats["cache_hits"],
        "failures": stats["failures"],
        "labelled_by": {"rule": counts["rule"], "external": counts["external"]},
        "fallbacks": sum(bool(r.get("failed")) for r in results.values()),
    }
    return labelled, summary
