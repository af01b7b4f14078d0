"""Generated ALFWorld games: official layout, deterministic, and won in alfworld's own engine.

One module fixture generates one game of each task type; the engine tests load them through
alfworld's `AlfredTWEnv` (its loader rules, wrappers and handcoded expert) and play them.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gcd_trl.envs.alfworld_gen import GAME_FILE, TASK_TYPES, TRAJ_FILE, generate_games

NAME = re.compile(r"[a-z]+ \d+")  # how the engine names every object and receptacle ("mug 1")
APPLIANCE = {3: "SinkBasinType", 4: "MicrowaveType", 5: "FridgeType"}


@pytest.fixture(scope="module")
def games(tmp_path_factory) -> tuple[Path, list[str], dict]:
    out = tmp_path_factory.mktemp("alfworld_gen_games")
    stats: dict = {}
    dirs = generate_games(out, 6, seed=0, stats=stats)
    return out, dirs, stats


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _scene(game_dir: str) -> int:
    return int(Path(game_dir).parent.name.rsplit("-", 1)[1])


def test_task_types_match_alfworld():
    from alfworld.agents.environment.alfred_tw_env import TASK_TYPES as ALFWORLD_TASK_TYPES

    assert TASK_TYPES == ALFWORLD_TASK_TYPES


def test_layout_and_fields(games):
    out, dirs, stats = games
    assert len(dirs) == 6 and stats["games"] == 6 and stats["draws"] >= 6
    assert sorted(os.listdir(out)) == sorted({Path(d).parent.name for d in dirs})
    wheel_domain = Path(__import__("alfworld").__file__).with_name("data").joinpath("alfred.pddl").read_text()
    for i, d in enumerate(dirs):
        task_type = i + 1  # types are dealt in order 1..6
        task, obj, mrecep, recep, scene = Path(d).parent.name.split("-")
        assert Path(d).name == f"trial_gen_0_{i:05d}"
        assert (task, mrecep) == (TASK_TYPES[task_type], "None") and scene.isdigit()

        raw = Path(d, GAME_FILE).read_text()
        game = json.loads(raw)
        assert raw == json.dumps(game, sort_keys=True) + "\n"
        assert set(game) == {"pddl_domain", "grammar", "pddl_problem", "solvable", "walkthrough"}
        assert game["solvable"] is True and game["pddl_domain"] == wheel_domain
        assert game["walkthrough"] and all(isinstance(c, str) and c for c in game["walkthrough"])
        assert "UNKNOWN GOAL" not in game["grammar"]
        assert re.search(r'"Your task is to: [a-z ]+\."', game["grammar"])

        problem = game["pddl_problem"]
        assert f"(objectType ?o {obj}Type)" in problem or f"(objectType ?o1 {obj}Type)" in problem
        assert re.search(rf"\(objectType {obj}_bar_\S+ {obj}Type\)", problem)
        if task_type in APPLIANCE:
            assert re.search(rf"\(receptacleType \S+ {APPLIANCE[task_type]}\)", problem)
        if task_type == 2:
            lamp = re.search(rf"\(objectType ({recep}_bar_\S+) {recep}Type\)", problem).group(1)
            assert f"(toggleable {lamp})" in problem and re.search(rf"\(inReceptacle {lamp} \S+\)", problem)
        else:
            assert re.search(rf"\(receptacleType \S+ {recep}Type\)", problem)
        objects = problem.split("(:init")[0]
        declared = re.findall(r"^\s*(\S+) - receptacle$", objects, flags=re.M)
        assert declared and all(re.fullmatch(r"[A-Z][A-Za-z]+_bar_\S+", r) for r in declared)

        traj = json.loads(Path(d, TRAJ_FILE).read_text())
        assert traj["task_type"] == TASK_TYPES[task_type]
        params = traj["pddl_params"]
        assert params["object_target"] == obj and params["object_sliced"] is False
        assert params["mrecep_target"] == ""
        if task_type == 2:
            assert (params["parent_target"], params["toggle_target"]) == ("", recep)
        else:
            assert (params["parent_target"], params["toggle_target"]) == (recep, "")
        assert traj["scene"]["scene_num"] == int(scene)
        anns = traj["turk_annotations"]["anns"]
        assert len(anns) == 3 and all(a["task_desc"].endswith(".") for a in anns)
        assert len({a["task_desc"] for a in anns}) == 3


def test_same_seed_same_bytes_in_another_process(games, tmp_path):
    out, _, _ = games
    other = tmp_path / "again"
    code = (
        "import sys; from gcd_trl.envs.alfworld_gen import generate_games; "
        "generate_games(sys.argv[1], 6, 0, verify=False)"
    )  # verify changes no byte
    env = {**os.environ, "PYTHONHASHSEED": "12345"}  # set/dict orders must not leak into the files
    subprocess.run([sys.executable, "-c", code, str(other)], check=True, env=env, timeout=600)
    assert _files(other) == _files(out)


def test_different_seeds_different_scenes(games, tmp_path):
    _, dirs, _ = games
    other = generate_games(tmp_path / "seed1", 6, seed=1, verify=False)
    scenes0, scenes1 = [_scene(d) for d in dirs], [_scene(d) for d in other]
    assert scenes0 != scenes1
    assert len(set(scenes0)) > 1 and len(set(scenes1)) > 1


@pytest.mark.parametrize("bad", [(7,), (0, 1), ("1",), (1.0,), (True,), ()])
def test_bad_task_types_are_refused(tmp_path, bad):
    with pytest.raises(ValueError, match="task type|task_types") as err:
        generate_games(tmp_path, 1, 0, task_types=bad)
    if bad:
        assert repr([b for b in bad if b not in TASK_TYPES or type(b) is not int][0]) in str(err.value)
    assert not any(tmp_path.iterdir())


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(TypeError, match="task_types"):
        generate_games(tmp_path, 1, 0, task_types=3)
    with pytest.raises(ValueError, match="num"):
        generate_games(tmp_path, -1, 0)
    with pytest.raises(ValueError, match="seed"):
        generate_games(tmp_path, 1, -5)
    with pytest.raises(ValueError, match="loader skips"):
        generate_games(tmp_path / "Sliced", 1, 0)


def test_exhausted_attempts_raise_a_clear_error(tmp_path, monkeypatch):
    from gcd_trl.envs import alfworld_gen

    monkeypatch.setattr(alfworld_gen._Planner, "plan", lambda self, *args: [])  # a planner that never solves
    with pytest.raises(
        RuntimeError, match=r"could not generate a solvable pick_and_place_simple game.*2 attempts"
    ):
        generate_games(tmp_path, 1, 0, task_types=(1,), max_attempts=2)
    assert not any(tmp_path.iterdir())


def _check_names(obs: str, admissible: list[str]) -> None:
    room = obs.split("Your task is to:")[0]
    listed = re.findall(r"\ban? ([a-z]+ \d+)", room)
    assert listed, room
    for command in admissible:
        if command.startswith("go to "):
            assert NAME.fullmatch(command[len("go to ") :]), command


def test_walkthroughs_win_through_alfworld_loader(games):
    """alfworld's own loader (`AlfredTWEnv`: its skip rules, wrappers, gym env) finds and plays every game."""
    from alfworld.agents.environment.alfred_tw_env import AlfredTWEnv

    out, dirs, _ = games
    config = {
        "env": {
            "goal_desc_human_anns_prob": 0,
            "task_types": list(TASK_TYPES),
            "expert_type": "handcoded",
            "domain_randomization": False,
        },
        "dataset": {"eval_ood_data_path": str(out), "num_eval_games": -1},
        "general": {"training_method": "dagger"},
        "dagger": {"training": {"max_nb_steps_per_episode": 100}},
    }
    tw_env = AlfredTWEnv(config, train_eval="eval_out_of_distribution")
    assert sorted(tw_env.game_files) == sorted(os.path.join(d, GAME_FILE) for d in dirs)
    env = tw_env.init_env(batch_size=1)
    played = set()
    for _ in dirs:  # one pass over the shuffled games
        obs, infos = env.reset()
        gamefile = infos["extra.gamefile"][0]
        played.add(gamefile)
        _check_names(obs[0], infos["admissible_commands"][0])
        for command in json.loads(Path(gamefile).read_text())["walkthrough"]:
            assert not infos["won"][0]
            assert command in infos["admissible_commands"][0], (gamefile, command)
            obs, _, dones, infos = env.step([command])
        assert infos["won"][0] and dones[0], gamefile
    assert played == set(tw_env.game_files)


def test_games_speak_the_released_games_words(games):
    """Default (dataset) grammar: commands and feedback read as in ALFWorld's json_2.1.1 games."""
    _, dirs, _ = games
    puts = []
    for d in dirs:
        game = json.loads((Path(d) / GAME_FILE).read_text())
        assert 'template :: "put {o} in/on {r}";' in game["grammar"]
        assert "move {o} to {r}" not in game["grammar"]
        assert "You arrive at {lend.name}." in game["grammar"]
        puts += [c for c in game["walkthrough"] if " in/on " in c]
    assert puts and all(c.startswith("put ") for c in puts)


def test_unknown_grammar_is_refused(tmp_path):
    with pytest.raises(ValueError, match="grammar must be one of"):
        generate_games(tmp_path, 1, seed=0, grammar="alfred")


@pytest.fixture(scope="module")
def wheel_games(tmp_path_factory) -> list[str]:
    return generate_games(tmp_path_factory.mktemp("wheel_games"), 2, seed=0, grammar="wheel")


def test_handcoded_expert_wins(wheel_games):
    """alfworld's handcoded expert (wrappers as AlfredTWEnv stacks them for training) wins generated games
    in the wheel's own grammar, the only words it speaks ("move X to Y"); gcd-trl's env translates them
    for dataset-grammar games.

    Two small-scene games keep this quick (it loops on pick_two in alfworld 0.4.2: "move" commands are
    not recognised as putting down).
    """
    import textworld
    from alfworld.agents.environment.alfred_tw_env import AlfredDemangler, AlfredExpert, AlfredInfos
    from textworld.envs import PddlEnv

    dirs = wheel_games
    infos = textworld.EnvInfos(won=True, admissible_commands=True, extras=["gamefile"])
    env = AlfredExpert(AlfredInfos(AlfredDemangler(PddlEnv(infos), shuffle=False)), expert_type="handcoded")
    random.seed(0)  # the expert breaks ties at random
    for game_dir in dirs[:2]:  # pick_and_place_simple, look_at_obj_in_light
        env.load(os.path.join(game_dir, GAME_FILE))
        state, done = env.reset(), False
        for _ in range(40):
            state, _, done = env.step(state["extra.expert_plan"][0])
            if done:
                break
        assert state["won"], game_dir


def test_games_play_in_gcd_trl_alfworld_env(games):
    alfworld_env = pytest.importorskip("gcd_trl.envs.alfworld")
    from gcd_trl.envs.base import Task

    out, dirs, _ = games
    assert alfworld_env.list_games(out) == sorted(dirs)
    assert [alfworld_env.task_type_of(d) for d in dirs] == [1, 2, 3, 4, 5, 6]
    with alfworld_env.AlfWorldEnv(expert="planner") as env:
        for d in (dirs[0], dirs[5]):
            result = env.reset(Task(env="alfworld", game=d, task_type=alfworld_env.task_type_of(d)))
            for _ in range(30):
                result = env.step(env.expert_action())
                if result.done:
                    break
            assert result.won, d


# ------------------------------------------------------------------------------------------ room sizes
def _receptacles(game_dir: str) -> list[str]:
    problem = json.loads(Path(game_dir, GAME_FILE).read_text())["pddl_problem"]
    return re.findall(r"^\s*(\S+) - receptacle$", problem.split("(:init")[0], flags=re.M)


@pytest.fixture(scope="module")
def small_rooms(tmp_path_factory) -> tuple[Path, list[str]]:
    out = tmp_path_factory.mktemp("alfworld_gen_k3")
    return out, generate_games(out, 6, seed=0, max_receptacles=3)  # verify=True: each walkthrough replayed


def test_max_receptacles_keeps_the_task_and_cuts_the_room(games, small_rooms):
    """Same scene and goal as the full room (both drawn first), K receptacles, every one the task needs."""
    _, full_dirs, _ = games
    _, dirs = small_rooms
    assert [Path(d).parent.name for d in dirs] == [Path(d).parent.name for d in full_dirs]
    for i, d in enumerate(dirs):
        task_type = i + 1
        task, obj, _, recep, _ = Path(d).parent.name.split("-")
        receps = _receptacles(d)
        assert len(receps) == 3 < len(_receptacles(full_dirs[i])), d
        kinds = {r.split("_bar_")[0] for r in receps}
        problem = json.loads(Path(d, GAME_FILE).read_text())["pddl_problem"]
        if task_type != 2:
            assert re.search(rf"\(receptacleType \S+ {recep}Type\)", problem)
        if task_type in APPLIANCE:
            assert APPLIANCE[task_type].removesuffix("Type") in kinds | {"SinkBasin"}
            assert re.search(rf"\(receptacleType \S+ {APPLIANCE[task_type]}\)", problem)
        # the target starts in a kept receptacle (and a lamp stands on one for look_at_obj)
        placed = re.findall(rf"\(inReceptacle {obj}_bar_\S+ (\S+)\)", problem)
        assert placed and set(placed) <= set(receps)
        if task_type == 2:
            assert re.search(rf"\(inReceptacle {recep}_bar_\S+ (\S+)\)", problem)
        traj = json.loads(Path(d, TRAJ_FILE).read_text())
        assert traj["generator"]["max_receptacles"] == 3
    assert "max_receptacles" not in json.loads(Path(full_dirs[0], TRAJ_FILE).read_text())["generator"]


def test_small_rooms_are_won_by_the_expert_in_gcd_trl_env(small_rooms):
    """Planner-checked at generation (replayed on the full state); the searching expert wins them too."""
    alfworld_env = pytest.importorskip("gcd_trl.envs.alfworld")
    from gcd_trl.envs.base import Task

    _, dirs = small_rooms
    with alfworld_env.AlfWorldEnv(expert="handcoded") as env:
        for d in dirs[:2]:  # the demo's task types
            result = env.reset(Task(env="alfworld", game=d, task_type=alfworld_env.task_type_of(d)))
            for _ in range(40):
                result = env.step(env.expert_action())
                if result.done:
                    break
            assert result.won, d


def test_small_rooms_are_deterministic(small_rooms, tmp_path):
    out, _ = small_rooms
    again = generate_games(tmp_path / "again", 6, seed=0, max_receptacles=3, verify=False)
    assert len(again) == 6 and _files(tmp_path / "again") == _files(out)


def test_room_sizes_are_not_mixed(small_rooms, tmp_path):
    from gcd_trl.envs.alfworld_gen import GamesFolderError
    from gcd_trl.envs.splits import split_tasks

    out, dirs = small_rooms
    assert generate_games(out, 6, seed=0, max_receptacles=3) == dirs  # the same games: reused
    for other in (5, None):
        with pytest.raises(GamesFolderError, match="rooms cut to 3 receptacles.*one room size"):
            generate_games(out, 6, seed=0, max_receptacles=other, add=True)
    with pytest.raises(ValueError, match="max_receptacles must be an int >= 3"):
        generate_games(tmp_path / "x", 1, seed=0, max_receptacles=2)
    # a folder someone filled with two room sizes is refused when a split reads it
    mixed = tmp_path / "mixed"
    generate_games(mixed / "a", 1, seed=0, max_receptacles=3, verify=False)
    generate_games(mixed / "b", 1, seed=1, max_receptacles=5, verify=False)
    with pytest.raises(ValueError, match="mix room sizes .*rooms cut to 3.*rooms cut to 5"):
        split_tasks("alfworld", "all", "train", mixed)


def test_run_config_max_receptacles(small_rooms, tmp_path):
    """`data_dir` + `generate_games` + `max_receptacles` is all a config needs; a mismatch is refused."""
    from gcd_trl.config import ConfigError
    from gcd_trl.rollout.settings import EnvArguments, build_tasks

    out, dirs = small_rooms
    args = EnvArguments(
        environment="alfworld", data_dir=str(tmp_path / "g"), split="all", generate_games=2, max_receptacles=4
    )
    tasks = build_tasks(args)
    assert len(tasks) == 2 and all(len(_receptacles(t.game)) == 4 for t in tasks)
    same = build_tasks(
        EnvArguments(environment="alfworld", data_dir=str(out), split="all", max_receptacles=3)
    )
    assert sorted(t.game for t in same) == sorted(dirs)
    with pytest.raises(ConfigError, match="max_receptacles: 5, but the games under .* rooms of 3"):
        build_tasks(EnvArguments(environment="alfworld", data_dir=str(out), split="all", max_receptacles=5))
    with pytest.raises(ConfigError, match="max_receptacles"):
        EnvArguments(environment="alfworld", max_receptacles=2)
    with pytest.raises(ConfigError, match="max_receptacles applies to environment=alfworld"):
        EnvArguments(environment="scienceworld", max_receptacles=4)
