"""Inter-sample similarity of agent step samples vs single-turn reasoning samples (paper Figure 3a).

Each sample's representation is its mean-pooled last hidden state (over prompt and completion, or the
completion only); with `gradients=True` also the direction of its gradient of log p(completion | prompt).
The report gives the distribution of pairwise cosine similarities within each set (off-diagonal pairs)
and across the sets. The paper's finding: agent steps are far more alike than math problems, so their
gradients couple.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gcd_trl.analysis.common import (
    AnalysisError,
    GradientSketch,
    Timer,
    choose_sketch_dim,
    cosine_matrix,
    distinct_prompts,
    encode,
    encode_records,
    forward_samples,
    load_model,
    load_records,
    off_diagonal,
    pick,
    stats,
    write_json,
)
from gcd_trl.analysis.reference import load_reference


def run_similarity(
    model: str,
    trajectories: list[str],
    out_dir: str,
    *,
    reference: str = "arithmetic",
    reference_split: str = "test",
    reference_fields: tuple[str, str] = ("question", "answer"),
    num_samples: int = 48,
    pool: str = "all",
    gradients: bool = False,
    grad_dim: str | int | None = "auto",
    grad_params: str | None = None,
    max_grad_gb: float = 4.0,
    max_prompt_tokens: int | None = None,
    max_batch_tokens: int = 8192,
    seed: int = 0,
    device: str = "auto",
    dtype: str = "float32",
) -> dict[str, Any]:
    """Write OUT/similarity.json and OUT/similarity.png; return the JSON object."""
    if num_samples < 2:
        raise AnalysisError(f"--num-samples must be >= 2, got {num_samples}")
    records = distinct_prompts(load_records(trajectories))
    if len(records) < 2:
        raise AnalysisError(f"need at least 2 distinct agent steps in {trajectories}, found {len(records)}")
    ref_pairs = load_reference(
        reference, num_samples, split=reference_split, fields=reference_fields, seed=seed
    )
    timer = Timer()
    with timer("load_model"):
        net, tok = load_model(model, device, dtype)
    chosen = pick(records, num_samples, seed)
    agent = encode_records(tok, chosen, max_prompt_tokens=max_prompt_tokens)
    ref = [encode(tok, q, a, {"prompt": q}, max_prompt_tokens=max_prompt_tokens) for q, a in ref_pairs]
    sets = {"agent": agent, "reference": ref}
    result: dict[str, Any] = {
        "model": str(model),
        "trajectories": [str(t) for t in trajectories],
        "reference": reference,
        "pool": pool,
        "num_samples": {k: len(v) for k, v in sets.items()},
        "mean_tokens": {k: sum(s.length for s in v) / len(v) for k, v in sets.items()},
        "hidden": {},
    }
    import torch

    pooled = {}
    with timer("forward"):
        for name, samples in sets.items():
            fw = forward_samples(
                net,
                samples,
                pad_id=tok.pad_token_id,
                want=("pooled",),
                pool=pool,
                max_batch_tokens=max_batch_tokens,
            )
            pooled[name] = torch.stack([f.pooled for f in fw])
    matrices = {}
    for name, x in pooled.items():
        matrices[name] = cosine_matrix(x)
        result["hidden"][name] = stats(off_diagonal(matrices[name]))
    cross = (
        torch.nn.functional.normalize(pooled["agent"], dim=1)
        @ torch.nn.functional.normalize(pooled["reference"], dim=1).T
    )
    result["hidden"]["cross"] = stats(cross)
    result["hidden"]["agent_minus_reference"] = (
        result["hidden"]["agent"]["mean"] - result["hidden"]["reference"]["mean"]
    )

    grad_values = {}
    if gradients:
        sketch = GradientSketch(net, params=grad_params, seed=seed)
        dim = choose_sketch_dim(max(len(agent), len(ref)), sketch.num_params, grad_dim, max_grad_gb)
        sketch = GradientSketch(net, params=grad_params, dim=dim, seed=seed)
        result["gradient"] = {
            "parameters": sketch.num_params,
            "mode": "exact" if dim is None else f"sketch:{dim}",
        }
        with timer("gradients"):
            for name, samples in sets.items():
                g = cosine_matrix(sketch.matrix(samples))
                grad_values[name] = off_diagonal(g)
                result["gradient"][name] = stats(grad_values[name])
        result["gradient"]["agent_minus_reference"] = (
            result["gradient"]["agent"]["mean"] - result["gradient"]["reference"]["mean"]
        )
    result["seconds"] = timer.seconds
    out = Path(out_dir)
    write_json(out / "similarity.json", result)
    _plot(
        result,
        {k: off_diagonal(m).cpu().numpy() for k, m in matrices.items()},
        {k: v.cpu().numpy() for k, v in grad_values.items()},
        out / "similarity.png",
    )
    return result


def _plot(result: dict[str, Any], hidden: dict, grads: dict, path: Path) -> None:
    from gcd_trl.analysis.plotting import pyplot, save_png

    plt = pyplot()
    panels = [("mean-pooled last hidden state", hidden)] + ([("gradient direction", grads)] if grads else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2), squeeze=False)
    labels = {"agent": "agent steps", "reference": f"single-turn ({result['reference']})"}
    for ax, (title, values) in zip(axes[0], panels):
        for k, color in (("agent", "C3"), ("reference", "C0")):
            v = values[k]
            ax.hist(
                v,
                bins=40,
                range=(min(-0.1, float(v.min())), 1.0),
                alpha=0.55,
                color=color,
                label=f"{labels[k]}: mean {v.mean():.3f}",
                density=True,
            )
            ax.axvline(float(v.mean()), color=color, lw=1)
        ax.set(
            xlabel="pairwise cosine similarity", ylabel="density", title=f"Inter-sample similarity: {title}"
        )
        ax.legend(loc="upper left")
    save_png(fig, path)
