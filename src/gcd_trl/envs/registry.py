"""Which env class an `EnvSpec` names: the one place that imports the engines (lazily, so a worker that
plays ALFWorld never loads the JVM bridge, and the reverse)."""

from __future__ import annotations

from gcd_trl.envs.base import EnvSpec, TextEnv


def make_env(spec: EnvSpec) -> TextEnv:
    """Build the env named by `spec` (imports the engine lazily)."""
    if spec.env == "alfworld":
        from gcd_trl.envs.alfworld import AlfWorldEnv

        return AlfWorldEnv(expert=spec.alfworld_expert)
    from gcd_trl.envs.scienceworld import ScienceWorldEnv

    return ScienceWorldEnv(
        jvm_heap=spec.jvm_heap, simplifications=spec.simplifications, gold_cache_dir=spec.gold_cache_dir
    )
