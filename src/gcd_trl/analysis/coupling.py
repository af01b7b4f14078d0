"""The gradient-coupling matrix (paper Figure 3b): how one SGD step on (x_i, a_i) moves log p(a_j | x_j).

Samples are agent steps grouped by action: actions taken in several different states first, each with
up to `per_action` distinct states, sorted by action text so similar actions sit together. Entry (i, j)
is the change of log p(a_j | x_j) after one step of plain SGD with learning rate `lr` that raises
log p(a_i | x_i).

Cost: to first order that change is lr * g_i . g_j with g = grad log p(a | x), so the whole N x N
matrix needs N forward+backward passes (one per sample) and one N x N product of the gradient rows, not
N^2 steps. `verify` rows are measured exactly (a real step, a batched forward over all N samples, the
weights restored) to check the first-order matrix. Blocks on the diagonal of the action-level matrix
are the same action in different states: the paper's point is that they couple most.
"""

from __future__ import annotations

import difflib
import random
from pathlib import Path
from typing import Any

from gcd_trl.analysis.common import (
    AnalysisError,
    GradientSketch,
    Timer,
    action_key,
    choose_sketch_dim,
    distinct_prompts,
    encode_records,
    load_model,
    load_records,
    record_id,
    sequence_logprobs,
    write_json,
)

SIMILARITY_BINS = (
    (1.0, 1.01, "same action"),
    (0.75, 1.0, "similar (>=0.75)"),
    (0.5, 0.75, "0.5-0.75"),
    (0.0, 0.5, "different (<0.5)"),
)


def select_by_action(records: list[dict], num_actions: int, per_action: int, seed: int) -> list[list[dict]]:
    """Groups of records sharing an action: repeated actions first (most states), then single ones."""
    groups: dict[str, list[dict]] = {}
    for r in distinct_prompts(records):
        groups.setdefault(action_key(r), []).append(r)
    rng = random.Random(seed)
    ranked = sorted(groups.items(), key=lambda kv: (-len({r["prompt"] for r in kv[1]}), kv[0]))
    chosen = []
    for key, rows in ranked[:num_actions]:
        by_prompt = {}
        for r in rows:
            by_prompt.setdefault(r["prompt"], r)
        rows = list(by_prompt.values())
        rng.shuffle(rows)
        chosen.append((key, rows[:per_action]))
    chosen.sort(key=lambda kv: kv[0])
    return [rows for _, rows in chosen]


def action_similarity(a: str, b: str) -> float:
    return 1.0 if a == b else difflib.SequenceMatcher(None, a, b).ratio()


def run_coupling(
    model: str,
    trajectories: list[str],
    out_dir: str,
    *,
    num_actions: int = 8,
    per_action: int = 4,
    lr: float = 1e-5,
    verify: int = 2,
    grad_dim: str | int | None = "auto",
    grad_params: str | None = None,
    max_grad_gb: float = 4.0,
    max_prompt_tokens: int | None = None,
    max_batch_tokens: int = 8192,
    seed: int = 0,
    device: str = "auto",
    dtype: str = "float32",
) -> dict[str, Any]:
    """Write OUT/coupling.json and OUT/coupling.png; return the JSON object."""
    import torch

    if num_actions < 2 or per_action < 1:
        raise AnalysisError(f"need --num-actions >= 2 and --per-action >= 1, got {num_actions}, {per_action}")
    if not lr > 0:
        raise AnalysisError(f"--lr must be > 0, got {lr}")
    groups = select_by_action(load_records(trajectories), num_actions, per_action, seed)
    records = [r for g in groups for r in g]
    if len(groups) < 2 or len(records) < 3:
        raise AnalysisError(f"need at least 2 distinct actions and 3 distinct steps in {trajectories}")
    timer = Timer()
    with timer("load_model"):
        net, tok = load_model(model, device, dtype)
    samples = encode_records(tok, records, max_prompt_tokens=max_prompt_tokens)
    keys = [action_key(r) for r in records]
    n = len(samples)
    with timer("forward"):
        logp0 = sequence_logprobs(net, samples, pad_id=tok.pad_token_id, max_batch_tokens=max_batch_tokens)
    probe = GradientSketch(net, params=grad_params, seed=seed)
    dim = choose_sketch_dim(n, probe.num_params, grad_dim, max_grad_gb)
    sketch = GradientSketch(net, params=grad_params, dim=dim, seed=seed) if dim is not None else probe
    with timer("gradients"):
        grads = sketch.matrix(samples)
    with timer("products"):
        predicted = lr * (grads @ grads.T)
    del grads

    # exact rows: a real SGD step on sample i, every log p measured, the weights restored
    rows = sorted({round(k * (n - 1) / max(verify - 1, 1)) for k in range(verify)}) if verify > 0 else []
    exact: dict[int, list[float]] = {}
    saved = [p.detach().to("cpu", copy=True) for p in sketch.params]
    with timer("verify"):
        for i in rows:
            g = sketch.flat_grad(samples[i])
            with torch.no_grad():
                offset = 0
                for p in sketch.params:
                    p.add_(g[offset : offset + p.numel()].view_as(p).to(p.dtype), alpha=lr)
                    offset += p.numel()
                logp1 = sequence_logprobs(
                    net, samples, pad_id=tok.pad_token_id, max_batch_tokens=max_batch_tokens
                )
                for p, s in zip(sketch.params, saved):
                    p.copy_(s.to(p.device))
            exact[i] = (logp1 - logp0).tolist()
    pred = predicted.cpu()
    check = []
    for i, values in exact.items():
        ex, pr = torch.tensor(values), pred[i]
        check.append(
            {
                "row": i,
                "action": keys[i],
                "pearson": float(torch.corrcoef(torch.stack([ex, pr]))[0, 1]) if n > 2 else None,
                "relative_error": float((ex - pr).norm() / pr.norm().clamp_min(1e-30)),
                "self_exact": values[i],
                "self_predicted": float(pr[i]),
            }
        )

    # action-level matrix and the change by action similarity (i != j)
    names = sorted(set(keys), key=keys.index)
    members = {a: [i for i, k in enumerate(keys) if k == a] for a in names}
    action_matrix = [
        [_mean([float(pred[i, j]) for i in members[a] for j in members[b] if i != j]) for b in names]
        for a in names
    ]
    by_bin: dict[str, list[float]] = {label: [] for *_, label in SIMILARITY_BINS}
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            s = action_similarity(keys[i], keys[j])
            for lo, hi, label in SIMILARITY_BINS:
                if lo <= s < hi:
                    by_bin[label].append(float(pred[i, j]))
                    break
    same = by_bin["same action"]
    diff = [v for label, vals in by_bin.items() if label != "same action" for v in vals]
    result: dict[str, Any] = {
        "model": str(model),
        "trajectories": [str(t) for t in trajectories],
        "lr": lr,
        "num_samples": n,
        "num_pairs": n * n,
        "gradient": {"parameters": sketch.num_params, "mode": "exact" if dim is None else f"sketch:{dim}"},
        "samples": [{"index": i, "action": keys[i], **record_id(r)} for i, r in enumerate(records)],
        "actions": names,
        "delta_logp": pred.tolist(),
        "action_matrix": action_matrix,
        "by_action_similarity": {k: {"mean": _mean(v), "pairs": len(v)} for k, v in by_bin.items()},
        "summary": {
            "self_mean": _mean([float(pred[i, i]) for i in range(n)]),
            "same_action_mean": _mean(same),
            "different_action_mean": _mean(diff),
            "same_over_different": _mean(same) / _mean(diff) if same and diff and _mean(diff) else None,
        },
        "verify": check,
        "delta_logp_exact_rows": {str(i): v for i, v in exact.items()},
        "seconds": timer.seconds,
    }
    out = Path(out_dir)
    write_json(out / "coupling.json", result)
    _plot(result, out / "coupling.png")
    return result


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _norm(values):
    """A symmetric log colour scale: the same-action blocks are often 100x the rest."""
    import matplotlib.colors as mcolors
    import numpy as np

    lim = float(np.nanmax(np.abs(values))) if np.isfinite(values).any() else 1.0
    lim = lim or 1.0
    return mcolors.SymLogNorm(linthresh=lim * 1e-3, vmin=-lim, vmax=lim, base=10)


def _plot(result: dict[str, Any], path: Path) -> None:
    import numpy as np

    from gcd_trl.analysis.plotting import pyplot, save_png, short

    plt = pyplot()
    fig, ax = plt.subplots(1, 3, figsize=(12, 4.0), gridspec_kw={"width_ratios": [1, 1.15, 0.9]})
    m = np.array(result["delta_logp"], dtype=float)
    im = ax[0].imshow(m, cmap="RdBu_r", norm=_norm(m))
    keys = [s["action"] for s in result["samples"]]
    edges = [i - 0.5 for i in range(1, len(keys)) if keys[i] != keys[i - 1]]
    for e in edges:
        ax[0].axhline(e, color="k", lw=0.3)
        ax[0].axvline(e, color="k", lw=0.3)
    ax[0].set(
        xlabel="measured sample j",
        ylabel="updated sample i",
        title=f"Δ log p(a_j|x_j) after one SGD step on i (lr={result['lr']:g})",
    )
    fig.colorbar(im, ax=ax[0], fraction=0.046)

    a = np.array([[np.nan if v is None else v for v in row] for row in result["action_matrix"]], dtype=float)
    im = ax[1].imshow(a, cmap="RdBu_r", norm=_norm(a))
    labels = [short(x, 22) for x in result["actions"]]
    ax[1].set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=6)
    ax[1].set_yticks(range(len(labels)), labels, fontsize=6)
    s = result["summary"]
    ax[1].set_title(
        f"by action, i≠j: same {s['same_action_mean'] or 0:.2g}, other {s['different_action_mean'] or 0:.2g}"
    )
    fig.colorbar(im, ax=ax[1], fraction=0.046)

    bins = result["by_action_similarity"]
    names = [k for k, v in bins.items() if v["mean"] is not None]
    short_names = {"same action": "same", "similar (>=0.75)": "≥0.75", "different (<0.5)": "<0.5"}
    ax[2].bar(range(len(names)), [bins[k]["mean"] for k in names], color="C0")
    ax[2].set_xticks(
        range(len(names)), [f"{short_names.get(k, k)}\n{bins[k]['pairs']} pairs" for k in names], fontsize=7
    )
    ax[2].axhline(0, color="k", lw=0.5)
    ax[2].set_yscale("symlog", linthresh=max(abs(bins[k]["mean"]) for k in names) * 1e-3 or 1e-12)
    title = "mean Δ log p by action-string similarity"
    if result["verify"]:
        r = [v["pearson"] for v in result["verify"] if v["pearson"] is not None]
        if r:
            title += f"\nreal-step check: Pearson r ≥ {min(r):.3f}"
    ax[2].set(ylabel="Δ log p (first order, symlog)", title=title)
    save_png(fig, path)
