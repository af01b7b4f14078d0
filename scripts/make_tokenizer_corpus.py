"""Regenerate the tokenizer corpus that `gcd-trl tiny-model` trains its BPE tokenizer on.

The tiny offline model needs a vocabulary that fits the text it will see: ALFWorld and ScienceWorld
observations, actions and task descriptions, and our prompt templates. This script plays the real
engines (ALFWorld's TextWorld games from ../shared, ScienceWorld's gold paths) and writes every distinct
line it saw, sorted, to `src/gcd_trl/assets/tokenizer_corpus.txt` (the one copy: the builder reads it
from the installed package, so nothing needs ../shared at run time). Run it only when the envs or the
templates change; the output is committed.

    python scripts/make_tokenizer_corpus.py [--shared ../shared] [--out PATH] [--max-bytes 1800000]
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import random
import re
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "src" / "gcd_trl" / "assets" / "tokenizer_corpus.txt"
PROMPTS_DIR = REPO / "src" / "gcd_trl" / "prompts"

TAGS = ("think", "action", "planning", "explore", "reflection", "monitor", "answer", "advise", "rule")
# Text the model writes or the pipeline adds that the engines never print.
EXTRA_LINES = [
    *(f"<{t}></{t}>" for t in TAGS),
    *(f"<{t}> </{t}>" for t in TAGS),
    "\\boxed{0}",
    "\\boxed{1}",
    "<answer>\\boxed{0}</answer>",
    "<answer>\\boxed{1}</answer>",
    "Nothing happens.",
    "No known action matches that input.",
    "Invalid action.",
    "The action is not admissible.",
    "Your output did not contain an action.",
    "Prior to this step, you have already taken 0 step(s).",
    "[Observation 1: 'You arrive at countertop 1.', Action 1: 'go to countertop 1']",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30",
]
LOC_RE = re.compile(r"You arrive at loc \d+\. (On|The) (the )?([a-z]+ \d+)")


def split_lines(text: str) -> list[str]:
    """Lines of `text`, right-stripped, without empty ones (tabs kept: ScienceWorld indents with them)."""
    return [line.rstrip() for line in text.splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------------- ALFWorld


def _name_location(m: re.Match) -> str:
    return f"You arrive at {m.group(3)}. {m.group(1)} {m.group(2) or ''}{m.group(3)}"


def alfworld_lines(game_files: list[str], seed: int, max_steps: int) -> set[str]:
    """Play each game once, mixing the handcoded expert (searching, so realistic) with random admissible
    actions (so failures and odd states show up too); keep observations, actions and task text."""
    import textworld
    from alfworld.agents.environment.alfred_tw_env import AlfredDemangler, AlfredExpert, AlfredInfos

    lines: set[str] = set()
    infos = textworld.EnvInfos(won=True, admissible_commands=True, extras=["gamefile", "expert_plan"])
    for game_file in game_files:
        rng = random.Random(f"{seed}:{game_file}")
        traj = Path(game_file).with_name("traj_data.json")
        if traj.exists():
            for ann in json.loads(traj.read_text()).get("turk_annotations", {}).get("anns", []):
                lines.update(split_lines(ann.get("task_desc", "")))
        try:
            env = textworld.start(
                game_file,
                request_infos=infos,
                wrappers=[AlfredDemangler(), AlfredInfos, AlfredExpert(expert_type="handcoded")],
            )
            state = env.reset()
        except Exception as err:  # a broken game must not stop the corpus
            print(f"skip {game_file}: {err!r}", file=sys.stderr)
            continue
        lines.update(split_lines(state.feedback))
        for step in range(max_steps):
            admissible = list(state.admissible_commands or [])
            lines.update(admissible)
            if step % 5 == 0 and admissible:  # the two list styles a prompt may use
                lines.add(", ".join(admissible))
                lines.add(", ".join(f"'{a}'" for a in admissible))
            plan = state.get("extra.expert_plan") or []
            if plan and rng.random() < 0.6:
                action = plan[0]
            elif admissible:
                action = rng.choice(admissible)
            else:
                break
            try:
                state, _, done = env.step(action)
            except Exception as err:
                print(f"stop {game_file} at step {step}: {err!r}", file=sys.stderr)
                break
            obs = state.feedback
            lines.update(split_lines(obs))
            # Some envs name the receptacle instead of "loc N": keep that wording in the corpus too.
            lines.update(split_lines(LOC_RE.sub(_name_location, obs)))
            lines.add(f"Observation {step + 1}: '{obs.strip()}', Action {step + 1}: '{action}'")
            if done:
                break
        env.close()
    return lines


def alfworld_vocabulary_lines(data: Path) -> set[str]:
    """Every object and receptacle name alfworld knows (from the wheel's constants), in the phrases the
    engine uses, and every human task description in the data: coverage beyond the games played."""
    from alfworld.gen import constants

    lines: set[str] = set()
    objects = sorted({o.lower() for o in [*constants.OBJECTS, *constants.MOVABLE_RECEPTACLES]})
    receptacles = sorted({r.lower() for r in constants.RECEPTACLES})
    for obj in objects:
        lines.update({f"a {obj} 1", f"take {obj} 1 from countertop 1", f"examine {obj} 1"})
        lines.update({f"clean {obj} 1 with sinkbasin 1", f"heat {obj} 1 with microwave 1"})
        lines.update({f"cool {obj} 1 with fridge 1", f"use {obj} 1"})
        lines.add(f"You pick up the {obj} 1 from the desk 1.")
    for rec in receptacles:
        lines.update({f"go to {rec} 1", f"open {rec} 1", f"close {rec} 1"})
        lines.update({f"move mug 1 to {rec} 1", f"put mug 1 in/on {rec} 1"})
        lines.update({f"You arrive at {rec} 1. On the {rec} 1, you see nothing.", f"The {rec} 1 is closed."})
        lines.update({f"You open the {rec} 1. The {rec} 1 is open. In it, you see a apple 1."})
    for traj in sorted(data.glob("*/*/*/traj_data.json")):
        for ann in json.loads(traj.read_text()).get("turk_annotations", {}).get("anns", []):
            lines.update(split_lines(ann.get("task_desc", "")))
    return lines


# ------------------------------------------------------------------------------------------ ScienceWorld


def scienceworld_lines(task_names: list[str], seed: int, variations: int) -> set[str]:
    """Replay gold paths on a few variations (train/dev/test) of each task, with and without the "easy"
    simplifications; keep observations, looks, inventories, task text and a sample of valid actions."""
    from scienceworld import ScienceWorldEnv

    lines: set[str] = set()
    env = ScienceWorldEnv("", envStepLimit=10_000)
    lines.update(a for a in env.get_possible_actions() if "ERROR" not in a)
    try:
        for name in task_names:
            rng = random.Random(f"{seed}:{name}")
            env.load(name, 0, "")
            pool = env.get_variations_train() + env.get_variations_dev() + env.get_variations_test()
            chosen = sorted(rng.sample(pool, min(variations, len(pool))))
            for i, var in enumerate(chosen):
                simpl = "easy" if i % 2 == 0 else ""
                try:
                    env.load(name, var, simpl, generateGoldPath=True)
                    gold = env.get_gold_action_sequence()
                    obs, _ = env.reset()
                except Exception as err:
                    print(f"skip {name}/{var}: {err!r}", file=sys.stderr)
                    continue
                lines.update(split_lines(obs))
                lines.update(split_lines(env.taskdescription()))
                mid = len(gold) // 2
                for step, action in enumerate(gold):
                    lines.add(action)
                    if step in (0, mid):
                        valid = env.get_valid_action_object_combinations()
                        sample = rng.sample(valid, min(80, len(valid)))
                        lines.update(sample)
                        lines.add(", ".join(sample[:30]))
                    if rng.random() < 0.1:  # an off-path action: failure messages and other rooms
                        lines.update(split_lines(env.server.step(rng.choice(env.get_possible_actions()))))
                    obs = env.server.step(action)
                    lines.update(split_lines(obs))
                    lines.add(f"Observation {step + 1}: '{obs.strip()}', Action {step + 1}: '{action}'")
                    if step % 4 == 0:
                        lines.update(split_lines(env.look()))
                        lines.update(split_lines(env.inventory()))
                lines.update(split_lines(env.get_goal_progress()))
    finally:
        env.close()
    return lines


# ----------------------------------------------------------------------------------------------- prompts


def prompt_lines(shared: Path) -> set[str]:
    """Our prompt templates (both raw and with the placeholders removed) or, if none are present, the
    paper's appendix A.4 prompts."""
    lines: set[str] = set(EXTRA_LINES)
    templates = sorted(PROMPTS_DIR.glob("*.txt"))
    for path in templates:
        text = path.read_text()
        lines.update(split_lines(text))
        lines.update(split_lines(re.sub(r"\{\w+\}", "", text)))
    if not templates:
        paper = (shared / "paper" / "gcd-paper.txt").read_text()
        start, end = paper.index("A.4 PROMPTS"), paper.index("B MORE EXPERIMENTS")
        lines.update(split_lines(paper[start:end]))
    return lines


# -------------------------------------------------------------------------------------------------- main


def _job(kind: str, items: list[str], seed: int, n: int) -> set[str]:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if kind == "alfworld":
        return alfworld_lines(items, seed, n)
    return scienceworld_lines(items, seed, n)


def cap(lines: set[str], keep: set[str], max_bytes: int) -> list[str]:
    """At most `max_bytes` of lines: `keep` always, the rest by a stable hash order (a fair sample)."""
    out = sorted(keep)
    size = sum(len(s.encode()) + 1 for s in out)
    for line in sorted(lines - keep, key=lambda s: hashlib.sha1(s.encode()).digest()):
        n = len(line.encode()) + 1
        if size + n > max_bytes:
            continue
        out.append(line)
        size += n
    return sorted(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--alfworld-games", type=int, default=100, help="ALFWorld games to play (spread out)")
    parser.add_argument("--alfworld-steps", type=int, default=40, help="max steps per ALFWorld game")
    parser.add_argument("--scienceworld-variations", type=int, default=4, help="variations per task")
    parser.add_argument("--max-bytes", type=int, default=1_800_000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    data = args.shared / "data" / "alfworld" / "json_2.1.1"
    games = sorted(glob.glob(str(data / "valid_unseen" / "*" / "*" / "game.tw-pddl")))
    games += sorted(glob.glob(str(data / "valid_train" / "*" / "*" / "game.tw-pddl")))
    games = [g for g in games if "movable" not in g and "Sliced" not in g]
    if not games:
        raise SystemExit(f"no ALFWorld games under {data} (pass --shared)")
    stride = max(1, len(games) // max(1, args.alfworld_games))
    games = games[::stride][: args.alfworld_games]
    from scienceworld.constants import ID2TASK

    tasks = sorted(ID2TASK.values())
    jobs = [("alfworld", games[i::8], args.alfworld_steps) for i in range(8)]
    jobs += [("scienceworld", tasks[i::2], args.scienceworld_variations) for i in range(2)]

    t0 = time.time()
    lines: set[str] = set()
    with ProcessPoolExecutor(args.workers) as pool:
        futures = {
            pool.submit(_job, kind, items, args.seed, n): (kind, len(items)) for kind, items, n in jobs
        }
        for fut in as_completed(futures):
            got = fut.result()
            kind, n_items = futures[fut]
            print(f"{kind}: {n_items} items -> {len(got)} lines ({time.time() - t0:.0f}s)", flush=True)
            lines |= got
    lines |= alfworld_vocabulary_lines(data)
    keep = prompt_lines(args.shared)
    out = cap(lines | keep, keep, args.max_bytes)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(out) + "\n", encoding="utf-8")
    total = len(lines | keep)
    print(f"wrote {args.out}: {len(out)} of {total} distinct lines, {args.out.stat().st_size} bytes")


if __name__ == "__main__":
    main()
