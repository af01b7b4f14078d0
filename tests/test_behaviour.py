"""A refactor changes nothing: two tiny runs recorded before the redesign (tests/behaviour.py) are
reproduced step for step: the same step records, advantages, judge rewards and labels, the same logged
metrics and the same final weights (per-tensor sums; floats to 1e-4 relative, the rest exactly)."""

from __future__ import annotations

import json

import pytest

from behaviour import FIXTURES, normalise, record, tasks_and_pool

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from gcd_trl.tiny_model import build_tiny_model

    work = tmp_path_factory.mktemp("behaviour")
    model = build_tiny_model(work / "tiny", hidden_size=64, num_layers=2)
    tasks, pool = tasks_and_pool(work)
    yield work, str(model), tasks, pool
    pool.close()


def _same(got, want, where="run"):
    if isinstance(want, float) or isinstance(got, float):
        assert got == pytest.approx(want, rel=1e-4, abs=1e-6), where
    elif isinstance(want, dict):
        assert isinstance(got, dict) and sorted(got) == sorted(want), (where, sorted(got), sorted(want))
        for k in want:
            _same(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), (where, len(got), len(want))
        for i, (g, w) in enumerate(zip(got, want)):
            _same(g, w, f"{where}[{i}]")
    else:
        assert got == want, where


@pytest.mark.parametrize("kind", ["gigpo_gcd", "ppo"])
def test_run_reproduces_the_recorded_behaviour(setup, kind):
    work, model, tasks, pool = setup
    want = json.loads((FIXTURES / f"behaviour_{kind}.json").read_text())
    got = json.loads(json.dumps(normalise(record(kind, model, work, tasks, pool), work)))
    assert any(s["kind"] == "judge" for s in got["steps"]) == (kind == "gigpo_gcd")
    assert any(abs(s["advantage"] or 0) > 0 for s in got["steps"])
    _same(got, want, kind)
