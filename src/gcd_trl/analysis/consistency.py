"""The model's confidence in repeated actions (paper Figures 1 and 5), over checkpoints.

A repeat state is a step whose action equals one of the `window` actions before it in the same
trajectory (window 1: the step just before, as the trainer's `repeated` metric counts). An action is
what the env received, or for an inadmissible output what the completion wrote in <action> (retrying a
rejected action is the echo trap too). For each such state the model answers the same prompt
`num_samples` times (temperature sampling); its consistency is the share of answers that write the
same action again. The report gives, per checkpoint, the mean
consistency and the share of high-consistency repeats (at least `high` of `num_samples`: the paper's 5
of 10), and the same for states whose action is labelled good or bad (GCD rules or the files' labels).
The paper finds high-consistency repeats do not go away under GRPO, and some bad actions grow more
consistent until the good ones saturate.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gcd_trl.analysis.common import (
    AnalysisError,
    Timer,
    action_text,
    encode_records,
    load_model,
    load_records,
    model_labels,
    pick,
    progress,
    record_id,
    write_json,
    written_action,
)
from gcd_trl.rollout.parse import normalize_action
from gcd_trl.rollout.records import group_trajectories


def repeat_states(records: list[dict], window: int = 1) -> list[dict]:
    """Steps whose action (taken, or written but inadmissible) was also attempted in one of the `window`
    steps before, in the same trajectory."""
    if window < 1:
        raise AnalysisError(f"--window must be >= 1, got {window}")
    out = []
    for steps in group_trajectories(records).values():
        keys = [normalize_action(a) if (a := action_text(r)) else None for r in steps]
        for t, r in enumerate(steps):
            if keys[t] is not None and keys[t] in keys[max(0, t - window) : t]:
                out.append(r)
    return out


def sampled_actions(texts: Sequence[str]) -> list[str | None]:
    """The normalised action each answer writes (None when it writes none)."""
    return [normalize_action(a) if (a := written_action(text)) else None for text in texts]


def consistency_counts(
    generator, prompt_ids: list[list[int]], actions: list[str], num_samples: int, batch: int
) -> list[int]:
    """How many of num_samples answers per state repeat its action."""
    flat = [ids for ids in prompt_ids for _ in range(num_samples)]
    texts: list[str] = []
    for start in progress(range(0, len(flat), batch), "generate", unit="batch"):
        texts.extend(g.text for g in generator.generate_ids(flat[start : start + batch]))
    taken = sampled_actions(texts)
    return [
        sum(a == normalize_action(actions[s]) for a in taken[s * num_samples : (s + 1) * num_samples])
        for s in range(len(actions))
    ]


def summarize_counts(counts: list[int], num_samples: int, high: int) -> dict[str, Any]:
    if not counts:
        return {"states": 0}
    return {
        "states": len(counts),
        "mean_consistency": sum(counts) / (len(counts) * num_samples),
        "high_share": sum(c >= high for c in counts) / len(counts),
        "histogram": [sum(c == k for c in counts) for k in range(num_samples + 1)],
        "counts": counts,
    }


def run_consistency(
    models: Sequence[str],
    trajectories: list[str] | Sequence[list[str]],
    out_dir: str,
    *,
    num_samples: int = 10,
    high: int = 5,
    window: int = 1,
    max_states: int = 32,
    labels: str = "auto",
    temperature: float = 1.0,
    max_new_tokens: int | None = None,
    max_prompt_tokens: int | None = None,
    batch_size: int = 64,
    seed: int = 0,
    device: str = "auto",
    dtype: str = "float32",
) -> dict[str, Any]:
    """Write OUT/consistency.json and OUT/consistency.png; return the JSON object.

    `trajectories`: one list of paths for every model, or one list per model (each checkpoint's own
    trajectories, as the paper generates them)."""
    from gcd_trl.analysis.influence import labelled
    from gcd_trl.generation import HFGenerator, SamplingSettings

    if not models:
        raise AnalysisError("no model given (--model PATH, repeat it for a series of checkpoints)")
    if num_samples < 1 or not 1 <= high <= num_samples:
        raise AnalysisError(f"need num_samples >= 1 and 1 <= high <= num_samples, got {num_samples}, {high}")
    per_model = trajectories and not isinstance(trajectories[0], str | Path)
    if per_model and len(trajectories) != len(models):
        raise AnalysisError(
            f"{len(trajectories)} trajectory sets for {len(models)} models: give one, or one per model"
        )
    sets = list(trajectories) if per_model else [list(trajectories)] * len(models)
    # states per trajectory set, chosen once per set
    cache: dict[tuple, dict[str, list[dict]]] = {}
    for paths in sets:
        key = tuple(map(str, paths))
        if key in cache:
            continue
        records, source = labelled(load_records(paths), labels)
        valid = [r for r in records if action_text(r)]
        cache[key] = {
            "repeat": pick(repeat_states(records, window), max_states, seed),
            "good": pick([r for r in valid if r.get("label") == 1], max_states, seed + 1),
            "bad": pick([r for r in valid if r.get("label") == 0], max_states, seed + 2),
            "source": source,
        }
    if not any(c["repeat"] or c["good"] or c["bad"] for c in cache.values()):
        raise AnalysisError(f"no repeated, good or bad valid actions in {sets[0]}: nothing to sample")
    timer = Timer()
    rows = []
    names = model_labels(models)
    for index, (model, paths) in enumerate(zip(models, sets)):
        chosen = cache[tuple(map(str, paths))]
        with timer(f"load:{index}"):
            net, tok = load_model(model, device, dtype)
        row: dict[str, Any] = {
            "model": str(model),
            "label": names[index],
            "label_source": chosen["source"],
        }
        for kind in ("repeat", "good", "bad"):
            states = chosen[kind]
            samples = encode_records(tok, states, max_prompt_tokens=max_prompt_tokens)
            if not samples:
                row[kind] = summarize_counts([], num_samples, high)
                continue
            longest = max(len(s.completion_ids) for s in samples)
            settings = SamplingSettings(
                max_new_tokens=max_new_tokens or longest + 16, temperature=temperature, seed=seed + index
            )
            gen = HFGenerator(net, tok, settings)
            with timer(f"generate:{index}"):
                counts = consistency_counts(
                    gen,
                    [s.prompt_ids for s in samples],
                    [action_text(s.record) for s in samples],
                    num_samples,
                    batch_size,
                )
            row[kind] = summarize_counts(counts, num_samples, high)
            row[kind]["states_detail"] = [
                {"action": action_text(s.record), "count": c, **record_id(s.record)}
                for s, c in zip(samples, counts)
            ]
        rows.append(row)
        del net
    result = {
        "trajectories": [list(map(str, p)) for p in sets] if per_model else [str(p) for p in sets[0]],
        "num_samples": num_samples,
        "high": high,
        "window": window,
        "temperature": temperature,
        "checkpoints": rows,
        "seconds": timer.seconds,
    }
    out = Path(out_dir)
    write_json(out / "consistency.json", result)
    _plot(result, out / "consistency.png")
    return result


def _plot(result: dict[str, Any], path: Path) -> None:
    import numpy as np

    from gcd_trl.analysis.plotting import pyplot, save_png

    plt = pyplot()
    rows, n, high = result["checkpoints"], result["num_samples"], result["high"]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(1, 2, figsize=(8.4, 3.2))
    # Figure 1: consistency levels of repeat states per checkpoint (stacked shares) and the high share
    bottom = np.zeros(len(rows))
    bands = [(0, 0, "0"), (1, high - 1, f"1-{high - 1}"), (high, n, f"{high}-{n} (high)")]
    for (lo, hi, name), color in zip(bands, ("#dddddd", "#9ecae1", "#de2d26")):
        share = np.array(
            [
                sum(r["repeat"].get("histogram", [0] * (n + 1))[lo : hi + 1]) / max(r["repeat"]["states"], 1)
                for r in rows
            ]
        )
        ax[0].bar(x, share, bottom=bottom, color=color, label=f"{name} of {n}")
        bottom += share
    ax[0].set(
        ylabel="share of repeat states",
        ylim=(0, 1.25),
        yticks=[0, 0.25, 0.5, 0.75, 1.0],
        title=f"Repeated actions: how often the model repeats ({rows[0]['repeat']['states']} states)",
    )
    ax[0].legend(loc="upper center", ncol=3)
    # Figure 5: good vs bad actions
    for kind, color in (("good", "C2"), ("bad", "C3"), ("repeat", "C0")):
        ys = [r[kind].get("mean_consistency") for r in rows]
        if any(v is not None for v in ys):
            ax[1].plot(
                x, [np.nan if v is None else v for v in ys], "-o", ms=3, color=color, label=f"{kind}: mean"
            )
            hs = [r[kind].get("high_share") for r in rows]
            ax[1].plot(
                x,
                [np.nan if v is None else v for v in hs],
                ":s",
                ms=3,
                color=color,
                label=f"{kind}: ≥{high}/{n}",
            )
    ax[1].set(ylabel="consistency", ylim=(-0.02, 1.02), title="Consistency of labelled actions")
    ax[1].legend(fontsize=6)
    for a in ax:
        a.set_xticks(x, [r["label"] for r in rows], rotation=30 if len(rows) > 4 else 0, fontsize=7)
    save_png(fig, path)
