"""Which tokens make samples similar (paper Figure 9), as text with weights.

Each completion token k of sample i gets the Eq. 2 influence it carries to the other samples: the mean
over samples j (and their tokens k') of <e_ik, e_jk'> * <h_ik, h_jk'> (see `influence`). With
`against="other-class"` only samples of the other label count (the harmful coupling between good and
bad steps); "all" uses every other sample. Output: tokens.json (per-sample tokens and weights, and a
ranking of token strings by their mean weight), tokens.html (each completion with tokens shaded by
weight) and tokens.png (the ranking and the most coupled completions). The paper's point: in agent
tasks the coupling sits on the reasoning and action words themselves, so masking "similar tokens"
(as in math RL) would remove the learning signal.
"""

from __future__ import annotations

import html
from collections import defaultdict
from pathlib import Path
from typing import Any

from gcd_trl.analysis.common import (
    AnalysisError,
    Timer,
    distinct_prompts,
    encode_records,
    forward_samples,
    load_model,
    load_records,
    pick,
    record_id,
    write_json,
)
from gcd_trl.analysis.influence import eq2_terms, labelled, select_balanced


def run_tokens(
    model: str,
    trajectories: list[str],
    out_dir: str,
    *,
    against: str = "all",
    labels: str = "auto",
    num_samples: int = 24,
    top: int = 20,
    show: int = 4,
    max_prompt_tokens: int | None = None,
    max_batch_tokens: int = 8192,
    block_tokens: int = 2048,
    seed: int = 0,
    device: str = "auto",
    dtype: str = "float32",
) -> dict[str, Any]:
    """Write OUT/tokens.json, OUT/tokens.html and OUT/tokens.png; return the JSON object."""
    import torch

    if against not in ("all", "other-class"):
        raise AnalysisError(f"--against must be 'all' or 'other-class', got {against!r}")
    if num_samples < 2:
        raise AnalysisError(f"--num-samples must be >= 2, got {num_samples}")
    records = load_records(trajectories)
    if against == "other-class":
        records, source = labelled(records, labels)
        good, bad = select_balanced(records, num_samples // 2, seed)
        if not good or not bad:
            raise AnalysisError(
                f"--against other-class needs good and bad steps; found {len(good)} good, {len(bad)} bad ({source})"
            )
        chosen = good + bad
    else:
        chosen = pick(distinct_prompts(records), num_samples, seed)
        if len(chosen) < 2:
            raise AnalysisError(f"need at least 2 distinct agent steps in {trajectories}")
    timer = Timer()
    with timer("load_model"):
        net, tok = load_model(model, device, dtype)
    samples = encode_records(tok, chosen, max_prompt_tokens=max_prompt_tokens)
    with timer("forward"):
        fw = forward_samples(
            net, samples, pad_id=tok.pad_token_id, want=("h", "probs"), max_batch_tokens=max_batch_tokens
        )
    with timer("pairs"):
        _, _, per_token = eq2_terms(fw, block_tokens=block_tokens)
    n = len(samples)
    if against == "other-class":
        lab = torch.tensor([r.get("label") for r in chosen], device=per_token.device)
        target = lab[:, None] != lab[None, :]
    else:
        target = ~torch.eye(n, dtype=torch.bool, device=per_token.device)
    per_sample, ranking = [], defaultdict(list)
    offset = 0
    for i, s in enumerate(samples):
        c = len(s.completion_ids)
        weights = per_token[offset : offset + c][:, target[i]].mean(dim=1).tolist()
        offset += c
        pieces = [tok.decode([t]) for t in s.completion_ids]
        for piece, w in zip(pieces, weights):
            ranking[piece.strip() or piece.replace(" ", "␣").replace("\n", "↵")].append(w)
        per_sample.append(
            {
                **record_id(s.record),
                "label": s.record.get("label"),
                "tokens": pieces,
                "weights": weights,
                "total": sum(weights),
            }
        )
    ranked = sorted(
        (
            {"token": k, "mean_weight": sum(v) / len(v), "count": len(v), "total": sum(v)}
            for k, v in ranking.items()
        ),
        key=lambda d: -d["total"],
    )
    result = {
        "model": str(model),
        "trajectories": [str(t) for t in trajectories],
        "against": against,
        "num_samples": n,
        "top_tokens": ranked[:top],
        "samples": per_sample,
        "seconds": timer.seconds,
    }
    out = Path(out_dir)
    write_json(out / "tokens.json", result)
    write_html(result, out / "tokens.html")
    _plot(result, out / "tokens.png", show)
    return result


def _shade(w: float, scale: float) -> str:
    a = min(abs(w) / scale, 1.0) if scale > 0 else 0.0
    return f"rgba(222,45,38,{a:.2f})" if w >= 0 else f"rgba(49,130,189,{a:.2f})"


def write_html(result: dict[str, Any], path: Path) -> Path:
    """Each completion with its tokens shaded by weight (red: pulls other samples up, blue: down)."""
    parts = [
        "<!doctype html><meta charset='utf-8'><title>gcd-trl token coupling</title>",
        "<style>body{font-family:sans-serif;max-width:60em}p{font-family:monospace;line-height:1.8}</style>",
        f"<h2>Tokens that couple samples (Eq. 2, against {html.escape(result['against'])})</h2>",
        "<p>"
        + " ".join(f"{html.escape(t['token'])}: {t['mean_weight']:.3g}" for t in result["top_tokens"])
        + "</p>",
    ]
    for s in sorted(result["samples"], key=lambda d: -d["total"]):
        scale = max((abs(w) for w in s["weights"]), default=0.0)
        spans = "".join(
            f"<span title='{w:.4g}' style='background:{_shade(w, scale)}'>{html.escape(t)}</span>"
            for t, w in zip(s["tokens"], s["weights"])
        )
        head = ", ".join(
            f"{k} {s[k]}" for k in ("task", "group", "traj", "step", "label") if s.get(k) is not None
        )
        parts.append(f"<h4>{html.escape(head)} (total {s['total']:.3g})</h4><p>{spans}</p>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def _plot(result: dict[str, Any], path: Path, show: int) -> None:
    import matplotlib.colors as mcolors

    from gcd_trl.analysis.plotting import pyplot, save_png

    plt = pyplot()
    samples = sorted(result["samples"], key=lambda d: -d["total"])[:show]
    fig = plt.figure(figsize=(9, 2.6 + 0.5 * len(samples)))
    grid = fig.add_gridspec(2, 1, height_ratios=[2.2, 0.5 * max(len(samples), 1)])
    ax = fig.add_subplot(grid[0])
    top = result["top_tokens"][:15]
    ax.bar(range(len(top)), [t["total"] for t in top], color="C3")
    ax.set_xticks(range(len(top)), [t["token"][:14] for t in top], rotation=45, ha="right", fontsize=7)
    ax.set(
        ylabel="summed weight",
        title=f"Tokens carrying cross-sample coupling (Eq. 2, against {result['against']})",
    )
    text_ax = fig.add_subplot(grid[1])
    text_ax.axis("off")
    cmap = plt.get_cmap("RdBu_r")
    renderer = fig.canvas.get_renderer()
    width_px = text_ax.get_window_extent(renderer).width
    line = 1.0 / max(len(samples) * 2.2, 1)
    y = 1.0
    for s in samples:
        scale = max((abs(w) for w in s["weights"]), default=1.0) or 1.0
        x = 0.0
        for t, w in zip(s["tokens"], s["weights"]):
            color = mcolors.to_hex(cmap(0.5 + 0.5 * w / scale))
            ink = "white" if abs(w) > 0.6 * scale else "black"
            label = text_ax.text(
                x,
                y,
                t.replace("\n", "↵"),
                family="monospace",
                fontsize=6.5,
                va="top",
                color=ink,
                bbox={"facecolor": color, "edgecolor": "none", "pad": 0.3},
                transform=text_ax.transAxes,
            )
            step = label.get_window_extent(renderer).width / width_px
            if x > 0 and x + step > 1.0:
                x, y = 0.0, y - line
                label.set_position((x, y))
            x += step
        y -= line * 1.6
    save_png(fig, path)
