"""Influence between good and bad samples (paper Eq. 2, section 5.3, Figure 8), over checkpoints.

For completion tokens k of sample i and k' of sample j, with h the readout's input before the token and
e = onehot(token) - softmax(logits) its prediction error, the readout-layer gradients of
log p(y_i | x_i) and log p(y_j | x_j) have inner product

    sum_{k,k'} <e_ik, e_jk'> * <h_ik, h_jk'>        (Eq. 2, alpha_{k,k'} = <e_ik, e_jk'>)

i.e. how much a step that raises sample i moves sample j through the readout. Influence(i, j) is this
averaged over token pairs (the paper averages per token). With labels (GCD rules or an external judge),
the gap = mean same-class influence - mean different-class influence: GCD should widen it (good and bad
steps stop pulling each other). "hidden" repeats everything with alpha = 1 (plain representation
similarity) to separate the two factors.

Cost per checkpoint: one batched forward over the N samples, then (sum of completion tokens)^2 x
(d + V) multiply-adds for the token-pair terms, computed in row blocks of `block_tokens` tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gcd_trl.analysis.common import (
    AnalysisError,
    Forward,
    Timer,
    distinct_prompts,
    encode_records,
    forward_samples,
    load_model,
    load_records,
    model_labels,
    pick,
    record_id,
    write_json,
)


def labelled(records: list[dict], labels: str = "auto") -> tuple[list[dict], str]:
    """Records with a `label`: "records" keeps the files' labels (e.g. an external judge's), "rules" applies
    the GCD rules, "auto" keeps the files' labels when any record has one, else applies the rules."""
    if labels not in ("auto", "records", "rules"):
        raise AnalysisError(f"--labels must be auto, records or rules, got {labels!r}")
    has = any(r.get("label") is not None for r in records)
    if labels == "records" or (labels == "auto" and has):
        if not has:
            raise AnalysisError("--labels records: no step record has a `label` field")
        return records, "records"
    from gcd_trl.gcd.labels import label_records

    return label_records(records), "rules"


def select_balanced(records: list[dict], per_class: int, seed: int) -> tuple[list[dict], list[dict]]:
    """Up to per_class distinct good steps and as many bad ones, drawn with `seed`."""
    rows = distinct_prompts(records)
    good = [r for r in rows if r.get("label") == 1]
    bad = [r for r in rows if r.get("label") == 0]
    return pick(good, per_class, seed), pick(bad, per_class, seed + 1)


def eq2_terms(fw: Sequence[Forward], *, block_tokens: int = 2048):
    """(S, S_hidden, per_token): N x N mean token-pair influence with alpha (Eq. 2) and with alpha = 1, and
    a (total tokens x N) matrix: each completion token's mean influence on each sample."""
    import torch

    h = torch.cat([f.h for f in fw]).float()
    p = torch.cat([f.probs for f in fw]).float()
    y = torch.cat([f.targets for f in fw])
    counts = torch.tensor([len(f.targets) for f in fw], device=h.device)
    seg = torch.repeat_interleave(torch.arange(len(fw), device=h.device), counts)
    avg = torch.nn.functional.one_hot(seg, len(fw)).float() / counts[seg, None].float()  # (T, N)
    p_at_y = p.index_select(1, y)  # p_at_y[a, b] = prob of token b's target at position a
    n, t = len(fw), h.shape[0]
    s = torch.zeros(n, n, device=h.device)
    s_hidden = torch.zeros(n, n, device=h.device)
    per_token = torch.zeros(t, n, device=h.device)
    for start in range(0, t, block_tokens):
        r = slice(start, min(start + block_tokens, t))
        k = h[r] @ h.T
        alpha = (y[r, None] == y[None, :]).float() - p_at_y[r] - p_at_y[:, r].T + p[r] @ p.T
        per_token[r] = (alpha * k) @ avg
        s += avg[r].T @ per_token[r]
        s_hidden += avg[r].T @ (k @ avg)
    return s, s_hidden, per_token


def class_stats(s, labels: Sequence[int]) -> dict[str, float | None]:
    """Mean off-diagonal influence by class pair, and the same-minus-different gap."""
    import torch

    lab = torch.tensor(list(labels), device=s.device)
    off = ~torch.eye(len(lab), dtype=torch.bool, device=s.device)
    both_good = (lab[:, None] == 1) & (lab[None, :] == 1) & off
    both_bad = (lab[:, None] == 0) & (lab[None, :] == 0) & off
    diff = lab[:, None] != lab[None, :]

    def mean(mask) -> float | None:
        return float(s[mask].mean()) if mask.any() else None

    same, different = mean(both_good | both_bad), mean(diff)
    gap = same - different if same is not None and different is not None else None
    scale = (abs(same) + abs(different)) / 2 if gap is not None else 0.0
    return {
        "good_good": mean(both_good),
        "bad_bad": mean(both_bad),
        "good_bad": different,
        "same_class": same,
        "different_class": different,
        "gap": gap,
        "relative_gap": gap / scale if gap is not None and scale > 0 else None,
    }


def run_influence(
    models: Sequence[str],
    trajectories: list[str],
    out_dir: str,
    *,
    labels: str = "auto",
    per_class: int = 16,
    max_prompt_tokens: int | None = None,
    max_completion_tokens: int | None = None,
    max_batch_tokens: int = 8192,
    block_tokens: int = 2048,
    seed: int = 0,
    device: str = "auto",
    dtype: str = "float32",
) -> dict[str, Any]:
    """Write OUT/influence.json and OUT/influence.png (gap per checkpoint); return the JSON object."""
    if not models:
        raise AnalysisError("no model given (--model PATH, repeat it for a series of checkpoints)")
    if per_class < 2:
        raise AnalysisError(f"--per-class must be >= 2, got {per_class}")
    records, source = labelled(load_records(trajectories), labels)
    good, bad = select_balanced(records, per_class, seed)
    if len(good) < 2 or len(bad) < 2:
        counts = [sum(r.get("label") == k for r in distinct_prompts(records)) for k in (1, 0)]
        raise AnalysisError(
            f"need at least 2 good and 2 bad labelled steps with distinct prompts in {trajectories}; found "
            f"{counts[0]} good and {counts[1]} bad (labels from {source}; the rules label a step good only "
            "when it ends a won episode)"
        )
    chosen = good + bad
    label_list = [1] * len(good) + [0] * len(bad)
    timer = Timer()
    rows = []
    names = model_labels(models)
    for index, model in enumerate(models):
        with timer(f"load:{index}"):
            net, tok = load_model(model, device, dtype)
        samples = encode_records(
            tok, chosen, max_prompt_tokens=max_prompt_tokens, max_completion_tokens=max_completion_tokens
        )
        with timer(f"forward:{index}"):
            fw = forward_samples(
                net, samples, pad_id=tok.pad_token_id, want=("h", "probs"), max_batch_tokens=max_batch_tokens
            )
        with timer(f"pairs:{index}"):
            s, s_hidden, _ = eq2_terms(fw, block_tokens=block_tokens)
        rows.append(
            {
                "model": str(model),
                "label": names[index],
                "eq2": class_stats(s, label_list),
                "hidden": class_stats(s_hidden, label_list),
                "tokens": sum(len(x.completion_ids) for x in samples),
            }
        )
        del net, fw
    result = {
        "trajectories": [str(t) for t in trajectories],
        "label_source": source,
        "num_good": len(good),
        "num_bad": len(bad),
        "num_pairs": len(chosen) ** 2,
        "samples": [{"label": lab, **record_id(r)} for lab, r in zip(label_list, chosen)],
        "checkpoints": rows,
        "seconds": timer.seconds,
    }
    out = Path(out_dir)
    write_json(out / "influence.json", result)
    _plot(result, out / "influence.png")
    return result


def _plot(result: dict[str, Any], path: Path) -> None:
    from gcd_trl.analysis.plotting import pyplot, save_png

    plt = pyplot()
    rows = result["checkpoints"]
    x = list(range(len(rows)))
    fig, ax = plt.subplots(1, 2, figsize=(8.4, 3.2))
    for key, style, name in (
        ("same_class", "-o", "same class"),
        ("different_class", "-s", "good vs bad"),
        ("good_good", ":", "good-good"),
        ("bad_bad", ":", "bad-bad"),
    ):
        ax[0].plot(x, [r["eq2"][key] for r in rows], style, ms=3, label=name)
    ax[0].set(ylabel="mean token-pair influence (Eq. 2)", title="Influence between samples")
    ax[1].plot(x, [r["eq2"]["relative_gap"] for r in rows], "-o", ms=3, color="C3", label="Eq. 2")
    ax[1].plot(
        x, [r["hidden"]["relative_gap"] for r in rows], "--o", ms=3, color="C7", label="hidden only (alpha=1)"
    )
    ax[1].axhline(0, color="k", lw=0.5)
    ax[1].set(
        ylabel="(same - different) / mean |.|",
        title=f"Gap, {result['num_good']} good / {result['num_bad']} bad steps ({result['label_source']})",
    )
    for a in ax:
        a.set_xticks(x, [r["label"] for r in rows], rotation=30 if len(rows) > 4 else 0, fontsize=7)
        a.legend()
    save_png(fig, path)
