"""`make demo`: a warm-started tiny model, RL with and without GCD on a room-size curriculum, evaluation,
a report; offline on 2 CPU cores.

    python -m demo [--out runs/demo] [--rounds N] [--seed N] [--fresh] [--small] [--from_scratch] [--correction]
    (make demo [FRESH=1] [ROUNDS=N] [SEED=N] [DEMO_SMALL=1] [FROM_SCRATCH=1] [CORRECTION=1])

Stages (each one a `gcd-trl` command, printed before it runs; a finished stage leaves a marker in
OUT/stages/ and is skipped on the next run, so a second `make demo` reuses what is built):
1. generated ALFWorld games of task types 1-2: training and held-out games with rooms cut to
   `room_size` receptacles (the curriculum: short games a small model wins sometimes), and held-out
   games of the same seed in full rooms;
2. the policy RL starts from: the shipped warm start (data/warm_start/, `make warm-start` rebuilds it;
   its provenance is in data/README.md); `--from_scratch` keeps the older path instead (a random-init
   tiny model, `make data`, a 5-minute SFT);
3. GiGPO from it, twice at the same seed and budget: without and with GCD's co-training (the policy
   judges its own steps in the same loop; rule labels, as no external judge is configured offline; golden
   rules only with `--correction`: the tiny policy cannot write them), side by side;
4. evaluation of random, expert, SFT and both RL checkpoints on the same held-out games (greedy, one
   episode a game, so policies are compared game by game), the learned policies in full rooms too, and
   the ScienceWorld expert on a few variations;
5. OUT/report.md: what ran, the results in Table 1's layout with 95% intervals, exact McNemar tests on
   the paired games, the judge's accuracy per round, per-type success and PNG plots.
`--small` (DEMO_SMALL=1) shrinks every stage for the test suite; `--rounds` sets the RL budget.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from demo import ROOT, SCIENCEWORLD_EXPERT_STEPS, WARM_START
from demo.render import write_report


def shown(cmd: list[str]) -> str:
    """A command as a person would type it from the repository root."""
    text = " ".join(shlex.quote(c) for c in cmd)
    return text.replace(sys.executable, ".venv/bin/python").replace(str(ROOT) + "/", "")


@dataclass
class Budget:
    """How big each stage is (the full demo, or --small for tests). The RL settings were fixed before the
    final runs from the ladder and the pilot runs in docs/sft.md; `rounds` is what fits the 15 minutes
    once rounds scored only completion tokens (docs/sft.md, "Six rounds in the same budget")."""

    room_size: int | None = 5  # the curriculum's rooms (None: full rooms)
    train_games: int = 200
    heldout_games: int = 80
    full_heldout_games: int = 30
    max_episode_steps: int = 15
    full_max_episode_steps: int = 30
    from_scratch: bool = False
    sft_minutes: float = 5.0  # --from_scratch only
    rounds: int = 6
    tasks_per_round: int = 8
    num_generations: int = 8
    learning_rate: float = 1e-4
    ppo_mini_batch_size: int | None = 128
    judge_prompts_per_round: int = 8
    correction: bool = False  # golden rules from the policy's own summaries (GCD's second half)
    scienceworld_tasks: int = 3
    seed: int = 0

    @classmethod
    def small(cls, rounds: int | None = None, from_scratch: bool = False) -> Budget:
        return cls(
            train_games=4,
            heldout_games=3,
            full_heldout_games=2,
            max_episode_steps=4,
            full_max_episode_steps=4,
            from_scratch=from_scratch,
            sft_minutes=0.15,
            rounds=rounds or 1,
            tasks_per_round=1,
            num_generations=2,
            ppo_mini_batch_size=None,
            judge_prompts_per_round=1,
            scienceworld_tasks=1,
        )


def _last_line(log: Path, width: int = 90) -> str:
    """The last non-empty line of a log (progress bars end lines with carriage returns)."""
    try:
        text = log.read_bytes()[-4096:].decode(errors="replace")
    except OSError:
        return ""
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text)  # tqdm's cursor moves between nested bars
    parts = [p.strip() for p in text.replace("\r", "\n").splitlines() if p.strip()]
    return parts[-1][:width] if parts else ""


class StageError(RuntimeError):
    """A stage's command failed: names the stage, the command and its exit code."""


class Demo:
    def __init__(self, out: Path, budget: Budget, data: Path | None = None) -> None:
        self.out, self.budget = out, budget
        self.data = data or out / "data"  # its own games and rows: `make data` keeps the defaults
        self.stages_dir = out / "stages"
        self.configs = out / "configs"
        self.ran: list[dict[str, Any]] = []
        self.group_walls: list[float] = []  # wall time of each side-by-side group (its stages overlap)
        self.runs = {"RL (GiGPO)": out / "rl_gigpo", "RL+GCD (GiGPO)": out / "rl_gigpo_gcd"}
        self.eval_dirs: dict[str, dict[str, Path]] = {}  # split -> policy -> eval folder
        self.start_kind = ""

    # ---- running stages ---------------------------------------------------------------------------
    def stage(self, name: str, commands: list[list[str]], done_when: Path | None = None) -> None:
        marker = self.stages_dir / f"{name}.json"
        if marker.is_file() and (done_when is None or done_when.exists()):
            record = json.loads(marker.read_text())
            record["reused"] = True
            self.ran.append(record)
            print(f"\n=== {name}: done before ({record['wall_s']:.0f} s then), reused", flush=True)
            return
        print(f"\n=== {name}", flush=True)
        t0 = time.perf_counter()
        for cmd in commands:
            print("$ " + shown(cmd), flush=True)
            env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
            env.setdefault("TOKENIZERS_PARALLELISM", "false")
            env.setdefault("OMP_NUM_THREADS", "2")
            code = subprocess.call(cmd, cwd=ROOT, env=env)
            if code != 0:
                raise StageError(f"stage '{name}' failed: exit {code} from: {' '.join(cmd)}")
        self._finished(name, commands, time.perf_counter() - t0)

    def _finished(self, name: str, commands: list[list[str]], wall: float, **extra: Any) -> None:
        """Leave the stage's marker (a rerun skips it) and record it for the report."""
        record = {"stage": name, "commands": [shown(c) for c in commands], "wall_s": wall, **extra}
        self.stages_dir.mkdir(parents=True, exist_ok=True)
        (self.stages_dir / f"{name}.json").write_text(json.dumps(record, indent=2))
        self.ran.append({**record, "reused": False})
        print(f"=== {name}: {wall:.0f} s", flush=True)

    def parallel(self, stages: list[tuple], width: int = 2) -> None:
        """One-command stages `(name, cmd, done_when[, after])`, `width` at a time, one torch thread each:
        two small-model processes on 2 cores finish sooner side by side than one after the other with 2
        threads each. A stage starts, in list order, once the stages named in its `after` have finished, so
        a core freed by one RL run goes to that run's evaluations instead of idling until the other run
        ends. Each stage logs to OUT/logs/; a heartbeat shows where each one is."""
        todo, finished = [], set()
        for name, cmd, done_when, *after in stages:
            marker = self.stages_dir / f"{name}.json"
            if marker.is_file() and done_when.exists():
                self.stage(name, [cmd], done_when)  # reports the reuse
                finished.add(name)
            else:
                todo.append((name, cmd, set(after[0]) if after else set()))
        if not todo:
            return
        unknown = {a for _, _, after in todo for a in after} - finished - {name for name, _, _ in todo}
        if unknown:
            raise ValueError(f"parallel: stages wait for unknown stages {sorted(unknown)}")
        logs = self.out / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
        env.update(TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
        t_group = time.perf_counter()
        running: dict[str, tuple[subprocess.Popen, float, Path, list[str]]] = {}
        failed: list[str] = []
        last_beat = time.perf_counter()
        while todo or running:
            while len(running) < width and not failed:
                ready = next((i for i, (_, _, after) in enumerate(todo) if after <= finished), None)
                if ready is None:
                    break
                name, cmd, _ = todo.pop(ready)
                log = logs / (re.sub(r"[^A-Za-z0-9.-]+", "_", name).strip("_") + ".log")
                print(f"\n=== {name} (side by side, 1 thread; log: {log.relative_to(self.out)})", flush=True)
                print("$ " + shown(cmd), flush=True)
                handle = log.open("w")
                proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT)
                handle.close()
                running[name] = (proc, time.perf_counter(), log, cmd)
            if not running:
                break
            time.sleep(1.0)
            for name, (proc, t0, log, cmd) in list(running.items()):
                code = proc.poll()
                if code is None:
                    continue
                del running[name]
                wall = time.perf_counter() - t0
                if code != 0:
                    print(f"=== {name}: FAILED (exit {code}); last lines of {log}:", flush=True)
                    print("\n".join(log.read_text(errors="replace").splitlines()[-15:]), flush=True)
                    failed.append(f"stage '{name}' failed: exit {code} from: {' '.join(cmd)} (log: {log})")
                    continue
                self._finished(name, [cmd], wall, side_by_side=True)
                finished.add(name)
            if running and time.perf_counter() - last_beat > 30:
                last_beat = time.perf_counter()
                for name, (_, t0, log, _) in running.items():
                    tail = _last_line(log)
                    print(f"  ... {name}: {time.perf_counter() - t0:.0f} s  {tail}", flush=True)
        if failed:
            raise StageError(failed[0])
        self.group_walls.append(time.perf_counter() - t_group)

    def gcd(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "gcd_trl", *args]

    def write_config(self, name: str, base: str, **overrides: Any) -> Path:
        """A stage's config: a shipped one with the demo's paths and budget written over it."""
        data = yaml.safe_load((ROOT / base).read_text())
        data.update(overrides)
        path = self.configs / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"# made by `make demo` from {base}\n" + yaml.safe_dump(data, sort_keys=False))
        return path

    def write_yaml(self, name: str, data: dict[str, Any]) -> Path:
        path = self.configs / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("# made by `make demo`\n" + yaml.safe_dump(data, sort_keys=False))
        return path

    # ---- the pipeline -----------------------------------------------------------------------------
    def games_dir(self, name: str) -> Path:
        return self.data / "alfworld" / "games" / name

    def _games(self, name: str, num: int, seed: int, room_size: int | None) -> tuple[str, list[str], Path]:
        cmd = self.gcd(
            "env",
            "generate-alfworld",
            "--data_dir",
            str(self.games_dir(name)),
            "--generate_games",
            str(num),
            "--generate_seed",
            str(seed),
            "--task_types",
            "1",
            "2",
            *(["--max_receptacles", str(room_size)] if room_size else []),
        )
        return f"1 games: {name}", cmd, self.games_dir(name)

    def start_model(self) -> tuple[str, Path]:
        """The policy RL starts from ("SFT" in the tables): the warm start, or this run's own cold start."""
        b, out = self.budget, self.out
        if not b.from_scratch:
            if not (WARM_START / "model.safetensors.index.json").is_file():
                raise StageError(
                    f"the warm start is missing ({WARM_START.relative_to(ROOT)}/model.safetensors.index.json): "
                    "`make warm-start` rebuilds it, or run `make demo FROM_SCRATCH=1`"
                )
            return "warm start", WARM_START
        model = out / "tiny-model"
        self.stage(
            "2a tiny model",
            [self.gcd("tiny-model", "--out", str(model), "--overwrite", "--entity_tokens")],
            model / "config.json",
        )
        make = ["make", "-s", "data", f"DATA={self.data}", f"SFT_GAMES={b.train_games}", "HELDOUT_GAMES=1"]
        agent_sft = self.data / "alfworld" / "agent_sft_alfworld_compact"
        judge_sft = self.data / "alfworld" / "judge_sft_alfworld_compact"
        self.stage("2b SFT data (make data)", [make], judge_sft / "summary.json")
        sft_dir = out / "sft"
        sft_cfg = self.write_config(
            "sft",
            "configs/sft/tiny_alfworld_judge.yaml",
            model_name_or_path=str(model),
            output_dir=str(sft_dir),
            datasets=[{"path": str(agent_sft), "weight": 1.0}, {"path": str(judge_sft), "weight": 0.5}],
            max_train_minutes=b.sft_minutes,
            seed=b.seed,
        )
        self.stage(
            "2c cold start: SFT on agent + judge data",
            [self.gcd("sft", "--config", str(sft_cfg))],
            sft_dir / "config.json",
        )
        return "cold start", sft_dir

    def run(self) -> Path:
        b, out = self.budget, self.out
        self.parallel(
            [
                self._games("train", b.train_games, 1, b.room_size),
                self._games("heldout", b.heldout_games, 2, b.room_size),
                self._games("heldout_full", b.full_heldout_games, 2, None),
            ]
        )
        self.start_kind, start = self.start_model()

        rl_common = dict(
            model_name_or_path=str(start),
            data_dir=str(self.games_dir("train")),
            max_receptacles=b.room_size,
            max_rounds=b.rounds,
            max_steps=-1,  # derived from max_rounds
            tasks_per_round=b.tasks_per_round,
            num_generations=b.num_generations,
            max_episode_steps=b.max_episode_steps,
            num_envs=min(16, b.tasks_per_round * b.num_generations),
            learning_rate=b.learning_rate,
            lr_scheduler_type="constant",
            ppo_mini_batch_size=b.ppo_mini_batch_size,
            bf16=True,  # float32 weights, bf16 autocast: ~2x faster steps on this CPU
            save_strategy="steps",  # checkpoints along the run: `make analyze` reads the series
            save_steps=3,
            save_only_model=True,
            max_tokens_per_microbatch=8192,
            logging_steps=1,
            seed=b.seed,
        )
        gcd_keys = dict(
            gcd=True,
            gcd_coef=1.0,
            judge_prompts_per_round=b.judge_prompts_per_round,
            judge_num_generations=4,
            judge_template="critic_compact",
            judge_max_completion_length=96,  # the critic format's answers run ~75 tokens
            judge_class_balance=True,
            # golden rules in the agent prompt need a policy that can write them: the tiny model's rules are
            # word salad, and its prompt with them lost every win (docs/sft.md); --correction turns them on
            correction=b.correction,
            correction_every=max(1, b.rounds // 2),
            max_rules=3,
        )
        base = "configs/rl/tiny_alfworld_gigpo_sft.yaml"
        rl_stages = []
        for (label, run_dir), extra in zip(self.runs.items(), ({}, gcd_keys)):
            cfg = self.write_config(run_dir.name, base, output_dir=str(run_dir), **rl_common, **extra)
            rl_stages.append((f"3 {label}", self.gcd("rl", "--config", str(cfg)), run_dir / "config.json"))

        policies = {
            "random": {"policy": "random"},
            "expert": {"policy": "expert"},
            "SFT": {"policy": "model", "model_name_or_path": str(start)},
            **{label: {"policy": "model", "model_name_or_path": str(d)} for label, d in self.runs.items()},
        }
        eval_stages = []
        for split, games, steps, labels in (
            ("heldout", "heldout", b.max_episode_steps, list(policies)),
            ("full", "heldout_full", b.full_max_episode_steps, ["SFT", "RL (GiGPO)"]),
        ):
            common = dict(
                environment="alfworld",
                data_dir=str(self.games_dir(games)),
                split="all",
                prompt_template="alfworld_compact",
                max_episode_steps=steps,
                history_length=2,
                max_new_tokens=32,
                num_envs=8,
                seed=b.seed,
            )
            for label in labels:
                slug = f"{split}_{_slug(label)}"
                d = out / "eval" / slug
                self.eval_dirs.setdefault(split, {})[label] = d
                cfg = self.write_yaml(
                    f"eval_{slug}", {**common, **policies[label], "label": label, "output_dir": str(d)}
                )
                after = [f"3 {label}"] if label in self.runs else []
                eval_stages.append(
                    (
                        f"4 eval {label} ({split})",
                        self.gcd("eval", "--config", str(cfg)),
                        d / "report.json",
                        after,
                    )
                )
        sw = out / "eval" / "scienceworld_expert"
        sw_cfg = self.write_yaml(
            "eval_scienceworld_expert",
            dict(
                policy="expert",
                label="expert",
                environment="scienceworld",
                split="L0",
                part="test",
                max_tasks=b.scienceworld_tasks,
                max_episode_steps=SCIENCEWORLD_EXPERT_STEPS,
                num_envs=1,
                output_dir=str(sw),
            ),
        )
        sw_stage = (
            "4 eval ScienceWorld expert",
            self.gcd("eval", "--config", str(sw_cfg)),
            sw / "report.json",
        )
        # one queue: a core freed by either RL run starts that run's evaluations (theirs first, then the rest)
        eval_stages.sort(key=lambda stage: not stage[3])
        self.parallel([*rl_stages, *eval_stages, sw_stage])

        return write_report(self, sw)


def _slug(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")


def _forget_rl_and_eval(out: Path) -> None:
    """Drop what depends on the RL budget: the RL runs, the evaluations and their stage markers."""
    for marker in (out / "stages").glob("[34] *.json"):
        marker.unlink()
    for path in (out / "rl_gigpo", out / "rl_gigpo_gcd", out / "eval"):
        shutil.rmtree(path, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gcd-trl demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("DEMO_OUT", "runs/demo"), help="Run folder.")
    parser.add_argument(
        "--rounds", type=int, default=int(os.environ.get("ROUNDS", 0)) or None, help="RL rounds."
    )
    parser.add_argument(
        "--fresh", action="store_true", default=os.environ.get("FRESH") == "1", help="Start over."
    )
    parser.add_argument(
        "--small",
        action="store_true",
        default=os.environ.get("DEMO_SMALL") == "1",
        help="A tiny run (tests).",
    )
    parser.add_argument(
        "--from_scratch",
        action="store_true",
        default=os.environ.get("FROM_SCRATCH") == "1",
        help="Start RL from this run's own 5-minute cold start of a random-init tiny model, not the warm start.",
    )
    parser.add_argument(
        "--correction",
        action="store_true",
        default=os.environ.get("CORRECTION") == "1",
        help="RL+GCD also writes golden rules into the agent prompt (off: the tiny policy's rules are noise).",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=int(os.environ.get("SEED", 0)),
        help="Seed of both RL runs and the random policy (the games stay the same): SEED=1 checks a result's luck.",
    )
    args = parser.parse_args(argv)
    out = Path(args.out)
    if not out.is_absolute():
        out = ROOT / out
    if args.small:
        budget = replace(
            Budget.small(args.rounds, args.from_scratch), correction=args.correction, seed=args.seed
        )
    else:
        budget = Budget(
            rounds=args.rounds or Budget.rounds,
            from_scratch=args.from_scratch,
            correction=args.correction,
            seed=args.seed,
        )
    if args.fresh and out.exists():
        print(f"demo: FRESH=1, removing {out}", flush=True)
        shutil.rmtree(out)
    elif (out / "budget.json").is_file() and not args.small:
        try:  # a rerun keeps the run's budget
            saved = Budget(**json.loads((out / "budget.json").read_text()))
        except TypeError:
            print(f"demo: {out} was made by another version of the demo: use FRESH=1", file=sys.stderr)
            return 1
        if saved.from_scratch != args.from_scratch:
            print(
                f"demo: {out} started from {'scratch' if saved.from_scratch else 'the warm start'}: use FRESH=1 "
                "to change that",
                file=sys.stderr,
            )
            return 1
        if args.rounds and args.rounds != saved.rounds:
            print(f"demo: ROUNDS={args.rounds} (was {saved.rounds}): RL and evaluation run again", flush=True)
            _forget_rl_and_eval(out)
        elif args.seed != saved.seed:
            print(f"demo: SEED={args.seed} (was {saved.seed}): RL and evaluation run again", flush=True)
            _forget_rl_and_eval(out)
        budget = replace(saved, rounds=args.rounds or saved.rounds, seed=args.seed)
    out.mkdir(parents=True, exist_ok=True)
    (out / "budget.json").write_text(json.dumps(asdict(budget), indent=2))
    t0 = time.perf_counter()
    demo = Demo(out, budget)
    try:
        report = demo.run()
    except StageError as err:
        print(
            f"\ndemo: {err}\ndemo: fix it and run `make demo` again (finished stages are reused)",
            file=sys.stderr,
        )
        return 1
    minutes = (time.perf_counter() - t0) / 60
    print(f"\ndemo done in {minutes:.1f} min. Report: {report}")
    return 0
