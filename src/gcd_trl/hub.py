"""The Hugging Face Hub: the check a push needs before any model loads, and the upload of a run's folder.

A run folder holds far more than a model: `rollouts/` (GBs over a long recipe), `judge_cache/`,
`completions/`, checkpoints, `training_args.bin` (a pickle of every argument). `Trainer.push_to_hub` uploads
all of it but the checkpoints, so gcd-trl uploads an allow-list instead (`files_to_push`): the model, the
tokenizer, the card, the resolved config, the run summary and the golden rules; rollouts only when asked.

The endpoint is `HF_ENDPOINT` (read when called, so a test can point it at a local server), the token is
huggingface_hub's (`HF_TOKEN`, else `hf auth login`'s file); neither is ever written anywhere.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_ENDPOINT = "https://huggingface.co"
ROLLOUTS_DIR = "rollouts"
# what a model repo needs (weights, config, tokenizer, chat template, adapters) and what a reader of the
# run needs (card, resolved config, summary, golden rules); nothing else leaves the machine
PUSH_PATTERNS = (
    "README.md",
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "*.safetensors.index.json",
    "adapter_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
    "run_config.yaml",
    "summary.json",
    "golden_rules.json",
)
# weights are not searched for a leaked token (GBs of floats); every other uploaded file is
UNSCANNED_SUFFIXES = (".safetensors",)


class HubError(ValueError):
    """The Hub cannot take a push (no token, unreachable, refused), said as what to do about it."""


def hub_endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def hub_token() -> str | None:
    """huggingface_hub's token: HF_TOKEN, else the one `hf auth login` saved."""
    from huggingface_hub import get_token

    return get_token()


def check_push_settings(args) -> None:
    """What every trainer checks of its TrainingArguments before a model loads: no `hub_token` written in a
    config or on the command line, and with `push_to_hub` a token and a Hub that answers. Raises HubError."""
    if getattr(args, "hub_token", None):
        raise HubError(
            "hub_token must not be written in a config or on the command line: export HF_TOKEN instead"
        )
    if getattr(args, "push_to_hub", False):  # no token or no Hub fails now, not after hours of training
        check_hub()


def check_hub(timeout: float = 10.0) -> str:
    """Before any model loads: a token exists and the Hub answers `whoami` with it. Returns the user name.

    Raises HubError naming what to do (export HF_TOKEN, log in, check HF_ENDPOINT or the network, or
    turn push_to_hub off)."""
    from huggingface_hub import constants, get_session
    from huggingface_hub.utils import build_hf_headers

    token = hub_token()
    endpoint = hub_endpoint()
    off = "or set push_to_hub: false and upload later with 'gcd-trl push OUTPUT_DIR'"
    if constants.is_offline_mode():
        raise HubError("push_to_hub: HF_HUB_OFFLINE is set, so nothing can reach the Hub: unset it, " + off)
    if not token:
        raise HubError(
            "push_to_hub needs a Hub token with write access: export HF_TOKEN=... or run 'hf auth login', "
            + off
        )
    try:
        response = get_session().get(
            f"{endpoint}/api/whoami-v2", headers=build_hf_headers(token=token), timeout=timeout
        )
    except Exception as err:  # refused, DNS, TLS, timeout: every transport failure means the same here
        raise HubError(
            f"push_to_hub: the Hub at {endpoint} does not answer ({type(err).__name__}): check the network "
            "and HF_ENDPOINT, " + off
        ) from None
    if response.status_code == 401:
        raise HubError(
            f"push_to_hub: the Hub at {endpoint} refuses the token (401): export a valid HF_TOKEN or run "
            "'hf auth login', " + off
        )
    if response.status_code != 200:
        raise HubError(
            f"push_to_hub: the Hub at {endpoint} answered HTTP {response.status_code} to whoami, " + off
        )
    try:
        return str(response.json()["name"])
    except (ValueError, KeyError, TypeError):
        raise HubError(
            f"push_to_hub: {endpoint} is not a Hub (its whoami answer has no name), " + off
        ) from None


def files_to_push(output_dir: str | os.PathLike, push_rollouts: bool = False) -> list[Path]:
    """The files of a run folder that go to the Hub, sorted: PUSH_PATTERNS at the top level, plus
    `rollouts/**` when `push_rollouts`. Never checkpoints, judge_cache, completions or training_args.bin."""
    root = Path(output_dir)
    chosen = {p for pattern in PUSH_PATTERNS for p in root.glob(pattern) if p.is_file()}
    if push_rollouts and (root / ROLLOUTS_DIR).is_dir():
        chosen |= {p for p in (root / ROLLOUTS_DIR).rglob("*") if p.is_file()}
    return sorted(chosen)


def check_no_secret(paths: list[Path], root: Path, secrets: list[str]) -> None:
    """Refuse to upload a file holding a secret (the token, an API key from the environment)."""
    needles = [s.encode() for s in secrets if s and len(s) >= 8]
    for path in paths:
        if path.suffix in UNSCANNED_SUFFIXES or not needles:
            continue
        data = path.read_bytes()
        if any(n in data for n in needles):
            raise HubError(
                f"{path.relative_to(root)} holds a secret (a token or API key): not uploaded; remove it and "
                "push again"
            )


def environment_secrets() -> list[str]:
    """Values that must never be uploaded: the Hub token and every *_API_KEY / *_TOKEN variable."""
    values = [hub_token() or ""]
    values += [v for k, v in os.environ.items() if k.endswith(("_API_KEY", "_TOKEN"))]
    return values


def push_folder(
    output_dir: str | os.PathLike,
    repo_id: str | None = None,
    *,
    push_rollouts: bool = False,
    private: bool | None = None,
    commit_message: str = "gcd-trl: upload the trained agent",
) -> str:
    """Create the repo (if new) and upload `files_to_push` in one commit. `repo_id` defaults to
    USER/<output_dir's name>. Returns the commit URL. Raises HubError."""
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    root = Path(output_dir)
    paths = files_to_push(root, push_rollouts)
    if not any(p.name == "config.json" or p.name == "adapter_config.json" for p in paths):
        raise HubError(
            f"{root} holds no saved model (no config.json or adapter_config.json): nothing to push"
        )
    check_no_secret(paths, root, environment_secrets())
    user = check_hub()
    repo_id = repo_id or f"{user}/{root.resolve().name}"
    api = HfApi(endpoint=hub_endpoint(), token=hub_token())
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.create_commit(
            repo_id,
            [
                CommitOperationAdd(path_in_repo=p.relative_to(root).as_posix(), path_or_fileobj=p)
                for p in paths
            ],
            commit_message=commit_message,
        )
    except (HfHubHTTPError, ValueError) as err:
        raise HubError(f"push to {repo_id} failed: {err}") from None
    return info.commit_url
