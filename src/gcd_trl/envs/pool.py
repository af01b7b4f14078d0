"""A pool of env worker processes: one env per process, one batched call per turn for all slots.

Protocol, one pipe per worker: the worker builds its env and sends ("ready", pid) (or ("error", text));
then the pool sends (cmd, arg) with cmd in reset|step|expert|close and the worker answers ("ok", value)
or ("error", text). A batched call sends every request first and then collects each reply before a
shared deadline, so the envs work in parallel. A worker that dies, runs past the deadline or raises is
killed together with its process group (the ScienceWorld JVM is its child) and replaced by a fresh one,
and its episode is reported as done and aborted; the other slots are unaffected. A reset whose worker
died (between episodes, say: killed by the OOM killer while idle) is tried once more on the replacement,
since no episode was under way and nothing is lost by starting it there (`reset_retries` counts them).

Workers are forked from multiprocessing's forkserver, which imports the env's engine once
(`registry.ENGINE_MODULES`): a pool of 8 ALFWorld workers is ready to play in about 0.6x the time of
spawned ones (`benchmarks/bench_envs.py`). Each worker still takes the pool's environment variables and
working directory, as a spawned one would. Windows, without a forkserver, spawns.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
import weakref
from collections.abc import Callable, Iterable
from typing import Any

from gcd_trl.envs.base import EnvSpec, StepResult, Task, TextEnv
from gcd_trl.envs.registry import ENGINE_MODULES, make_env

STAT_KEYS = ("steps", "resets", "aborted", "restarts", "timeouts", "errors", "crashes", "reset_retries")


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _reap_children(timeout: float) -> None:
    """Wait (briefly) for the worker's children, e.g. a JVM told to exit by env.close()."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            time.sleep(0.05)


def _worker(
    conn: Any, spec: EnvSpec, factory: Callable[[EnvSpec], TextEnv], environ: dict[str, str], cwd: str
) -> None:
    os.setsid()  # own session and process group: the pool kills the worker together with its JVM
    # a forkserver's children inherit *its* environment and directory, from when it started: use the pool's
    os.environ.clear()
    os.environ.update(environ)
    os.chdir(cwd)
    try:
        env = factory(spec)
    except Exception as e:
        conn.send(("error", f"building the {spec.env} env failed: {_describe(e)}"))
        return
    conn.send(("ready", os.getpid()))
    handlers = {"reset": env.reset, "step": env.step, "expert": lambda _: env.expert_action()}
    try:
        while True:
            try:
                cmd, arg = conn.recv()
            except EOFError:  # the pool is gone
                break
            if cmd == "close":
                break
            try:
                conn.send(("ok", handlers[cmd](arg)))
            except Exception as e:
                conn.send(("error", _describe(e)))
                break  # the env may be in a bad state: the pool replaces this worker
    finally:
        env.close()
        _reap_children(timeout=5.0)


def _kill(proc: Any, conn: Any) -> None:
    """SIGKILL the worker's whole process group (worker + JVM), reap the worker, close its pipe."""
    if proc.pid is not None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the group outlives its leader while a member lives
        except (ProcessLookupError, PermissionError):
            pass
        if proc.is_alive():  # not yet a group leader (killed before setsid)
            proc.kill()
        proc.join()
    conn.close()


def _shutdown(procs: list, conns: list, grace: float = 10.0) -> None:
    """Ask every worker to close its env, wait up to `grace` seconds, then kill what is left."""
    for conn in conns:
        try:
            conn.send(("close", None))
        except (OSError, ValueError):
            pass
    deadline = time.monotonic() + grace
    for proc in procs:
        proc.join(max(0.0, deadline - time.monotonic()))
    for proc, conn in zip(procs, conns):
        if proc is not None:
            _kill(proc, conn)


class EnvPool:
    """`num_envs` envs built from `spec`, each in its own process, addressed by slot 0..num_envs-1.

    Example:
        with EnvPool(EnvSpec("scienceworld"), 4) as pool:
            first = pool.reset({0: task, 1: task})
            nxt = pool.step({0: "look around", 1: "open door to kitchen"})
    """

    def __init__(
        self,
        spec: EnvSpec,
        num_envs: int,
        *,
        step_timeout: float = 60.0,
        reset_timeout: float = 300.0,
        start_method: str = "forkserver",
        env_factory: Callable[[EnvSpec], TextEnv] = make_env,
    ) -> None:
        if num_envs < 1:
            raise ValueError(f"EnvPool num_envs must be >= 1, got {num_envs}")
        if start_method == "fork":
            raise ValueError(
                "EnvPool start_method 'fork' is unsafe in a process with torch threads: "
                "use 'spawn' or 'forkserver'"
            )
        self.spec, self.num_envs = spec, num_envs
        self.step_timeout, self.reset_timeout = step_timeout, reset_timeout
        if start_method == "forkserver" and "forkserver" not in mp.get_all_start_methods():
            start_method = "spawn"  # Windows
        self._ctx = mp.get_context(start_method)
        if start_method == "forkserver":
            # no effect once this process's forkserver runs (a later pool of another env imports its own)
            self._ctx.set_forkserver_preload([__name__, *ENGINE_MODULES.get(spec.env, ())])
        self._factory = env_factory
        self._procs: list[Any] = [None] * num_envs
        self._conns: list[Any] = [None] * num_envs
        self._task_desc = [""] * num_envs
        self._no_episode: dict[int, str] = dict.fromkeys(range(num_envs), "no episode: reset the slot first")
        self._stats = dict.fromkeys(STAT_KEYS, 0)
        self._closed = False
        self._finalizer = weakref.finalize(self, _shutdown, self._procs, self._conns)
        failed = self._start(range(num_envs))
        if failed:
            self.close()
            raise RuntimeError(f"EnvPool: workers failed to start: {failed}")

    # -- public API ----------------------------------------------------------------------------
    def reset(self, tasks: dict[int, Task]) -> dict[int, StepResult]:
        """Start an episode of `tasks[slot]` in each listed slot; a slot whose worker had died is reset
        once more on its replacement (a hung or failing reset is not retried: it would likely fail again)."""
        self._check(tasks, Task)
        self._stats["resets"] += len(tasks)
        crashed: set[int] = set()
        replies, failed = self._call("reset", tasks, self.reset_timeout, crashed)
        retry = {slot: tasks[slot] for slot in failed if slot in crashed}
        if retry:
            self._stats["reset_retries"] += len(retry)
            again, failed_again = self._call("reset", retry, self.reset_timeout)
            replies.update(again)
            failed = {slot: failed_again.get(slot, why) for slot, why in failed.items() if slot not in again}
        for slot, result in replies.items():
            self._task_desc[slot] = result.task_description
            self._no_episode.pop(slot, None)
        for slot in failed:
            self._task_desc[slot] = ""
        return {
            slot: replies[slot] if slot in replies else self._aborted(slot, failed[slot]) for slot in tasks
        }

    def step(self, actions: dict[int, str]) -> dict[int, StepResult]:
        """Play `actions[slot]` in each listed slot; a slot without a live episode is reported aborted."""
        self._check(actions, str)
        self._stats["steps"] += len(actions)
        live = {slot: a for slot, a in actions.items() if slot not in self._no_episode}
        replies, failed = self._call("step", live, self.step_timeout)
        failed.update({slot: self._no_episode[slot] for slot in actions if slot not in live})
        return {
            slot: replies[slot] if slot in replies else self._aborted(slot, failed[slot]) for slot in actions
        }

    def expert_action(self, slots: Iterable[int]) -> dict[int, str | None]:
        """The expert's next action per slot (None when it has none or the worker failed)."""
        requests = dict.fromkeys(slots)
        self._check(requests, object)
        live = {slot: None for slot in requests if slot not in self._no_episode}
        # the first expert call of a ScienceWorld variation generates its gold path: reset-sized work
        replies, failed = self._call("expert", live, self.reset_timeout)
        for slot, reason in failed.items():
            self._aborted(slot, reason)
        return {slot: replies.get(slot) for slot in requests}

    @property
    def stats(self) -> dict[str, int]:
        return dict(self._stats)

    def worker_pids(self) -> list[int]:
        return [proc.pid for proc in self._procs]

    def close(self) -> None:
        self._closed = True
        self._finalizer()  # runs _shutdown once, also at interpreter exit or garbage collection

    def __enter__(self) -> EnvPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals -----------------------------------------------------------------------------
    def _start(self, slots: Iterable[int]) -> dict[int, str]:
        """Start workers for `slots` in parallel (JVM start-ups overlap); return {slot: reason} of failures."""
        slots = list(slots)
        for slot in slots:
            parent, child = self._ctx.Pipe()
            proc = self._ctx.Process(
                target=_worker,
                args=(child, self.spec, self._factory, dict(os.environ), os.getcwd()),
                daemon=True,
                name=f"EnvPool-{self.spec.env}-{slot}",
            )
            proc.start()
            child.close()
            self._procs[slot], self._conns[slot] = proc, parent
        deadline = time.monotonic() + self.reset_timeout
        failed = {}
        for slot in slots:
            conn = self._conns[slot]
            try:
                if not conn.poll(max(0.0, deadline - time.monotonic())):
                    raise TimeoutError(f"not ready after {self.reset_timeout:g}s")
                status, value = conn.recv()
                if status != "ready":
                    raise RuntimeError(value)
            except (EOFError, OSError, RuntimeError) as e:
                failed[slot] = _describe(e)
                _kill(self._procs[slot], conn)  # the dead pipe makes the slot's next call fail and retry
        return failed

    def _call(
        self, cmd: str, requests: dict[int, Any], timeout: float, crashed: set[int] | None = None
    ) -> tuple[dict[int, Any], dict[int, str]]:
        """Send all requests, then collect all replies; replace failed workers. Returns (replies, failed);
        the slots whose worker was found dead are added to `crashed`."""
        crashed = set() if crashed is None else crashed
        if self._closed:
            raise RuntimeError("EnvPool is closed")
        replies: dict[int, Any] = {}
        failed: dict[int, str] = {}
        deadline = time.monotonic() + timeout
        for slot, arg in requests.items():
            try:
                self._conns[slot].send((cmd, arg))
            except (OSError, ValueError) as e:
                failed[slot] = self._count("crashes", f"worker died before {cmd}: {_describe(e)}")
                crashed.add(slot)
        for slot in requests.keys() - failed.keys():
            conn, proc = self._conns[slot], self._procs[slot]
            try:
                if not conn.poll(max(0.0, deadline - time.monotonic())):
                    failed[slot] = self._count("timeouts", f"timeout: {cmd} took over {timeout:g}s")
                    continue
                status, value = conn.recv()
            except (EOFError, OSError):
                proc.join(1.0)
                failed[slot] = self._count("crashes", f"worker died during {cmd} (exit code {proc.exitcode})")
                crashed.add(slot)
                continue
            if status == "ok":
                replies[slot] = value
            else:
                failed[slot] = self._count("errors", f"env error during {cmd}: {value}")
        if failed:
            for slot in failed:
                _kill(self._procs[slot], self._conns[slot])
            self._stats["restarts"] += len(failed)
            self._start(failed)  # a worker that fails to start fails its slot's next call, which retries
        return replies, failed

    def _count(self, key: str, reason: str) -> str:
        self._stats[key] += 1
        return reason

    def _aborted(self, slot: int, reason: str) -> StepResult:
        self._stats["aborted"] += 1
        self._no_episode.setdefault(slot, f"no episode: the last one was aborted ({reason})")
        return StepResult(
            observation="",
            task_description=self._task_desc[slot],
            admissible_actions=None,
            done=True,
            won=False,
            info={"aborted": reason},
        )

    def _check(self, requests: dict[int, Any], value_type: type) -> None:
        for slot, value in requests.items():
            if not isinstance(slot, int) or not 0 <= slot < self.num_envs:
                raise KeyError(f"EnvPool slot {slot!r} is not in 0..{self.num_envs - 1}")
            if not isinstance(value, value_type):
                raise TypeError(
                    f"EnvPool slot {slot}: expected {value_type.__name__}, got {type(value).__name__}"
                )
