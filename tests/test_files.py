"""Atomic writes create files as `open()` does: mode 0666 less the umask, never mkstemp's 0600 (rollouts,
advantages, judge outputs and golden rules are read by other users of a shared run folder)."""

from __future__ import annotations

import os

import pytest

from gcd_trl import files
from gcd_trl.rollout.records import write_jsonl_atomic


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_atomic_writes_follow_the_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        written = [
            files.write_text_atomic(tmp_path / "a.txt", "x"),
            files.write_json_atomic(tmp_path / "golden_rules.json", {"rules": []}),
            files.write_jsonl_atomic(tmp_path / "judge.jsonl", [{"label": 1}]),
            write_jsonl_atomic(tmp_path / "rollouts" / "round_00000_rank0.jsonl", [{"step": 0}]),
        ]
    finally:
        os.umask(old)
    for path in written:
        assert path.stat().st_mode & 0o777 == 0o666 & ~mask, path
