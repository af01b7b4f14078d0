"""Which env class an `EnvSpec` names: the one place that imports the engines (lazily, so a worker that
plays ALFWorld never loads the JVM bridge, and the reverse)."""

from __future__ import annotations

from gcd_trl.envs.base import EnvSpec, TextEnv

# The modules an env's worker imports to build its engine: a forkserver imports them once, so workers forked
# from it start without importing textworld and alfworld again (about a CPU second each on 2 cores).
ENGINE_MODULES = {
    "alfworld": (
        "gcd_trl.envs.alfworld",
        "textworld",
        "textworld.envs.pddl",
        "alfworld.agents.environment.alfred_tw_env",
    ),
    "scienceworld": ("gcd_trl.envs.scienceworld", "scienceworld"),
}


def make_env(spec: EnvSpec) -> TextEnv:
    """Build the env named by `spec` (imports the engine lazily)."""
    if spec.env == "alfworld":
        from gcd_trl.envs.alfworld import AlfWorldEnv

        return AlfWorldEnv(expert=spec.alfworld_expert)
    from gcd_trl.envs.scienceworld import ScienceWorldEnv

    return ScienceWorldEnv(
        jvm_heap=spec.jvm_heap, simplifications=spec.simplifications, gold_cache_dir=spec.gold_cache_dir
    )
