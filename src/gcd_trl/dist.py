"""Processes: which one this is, printing once, and sums / maxima / objects over all of them.

Rank and world size are accelerate's (`PartialState`) once an `Accelerator` has set its state up (the
trainers do); before that, and in commands that never start one, they come from the launcher's
environment (torchrun, accelerate, MPI), so they work before and without a process group. The reductions take an `accelerate.Accelerator`, go through its `reduce`,
`gather_object` and `broadcast_object_list`, and are the identity with one process. Nothing here imports
torch at module level: `gcd-trl -h` stays instant.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any


def accelerate_state() -> Any:
    """accelerate's `PartialState` when an `Accelerator` has initialised it, else None. Importing accelerate
    (and torch) only to learn that nothing is initialised would slow every command, so a process that has
    not imported it has no state."""
    if "accelerate" not in sys.modules:
        return None
    from accelerate.state import PartialState, is_initialized

    return PartialState() if is_initialized() else None


def process_rank() -> int:
    """This process's global rank: accelerate's, else the launcher's (torchrun / accelerate / deepspeed /
    MPI; 0 when launched alone)."""
    state = accelerate_state()
    if state is not None:
        return state.process_index
    for name in ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


def world_size() -> int:
    state = accelerate_state()
    if state is not None:
        return state.num_processes
    for name in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 1


def is_main_process() -> bool:
    return process_rank() == 0


def print_once(*args: Any, file=None, **kwargs: Any) -> None:
    """`print` to stderr on the main process only: status lines, and errors every rank finds alike
    (accelerate's `PartialState.print` writes to stdout, which holds the commands' JSON summaries)."""
    if is_main_process():
        kwargs.setdefault("flush", True)
        print(*args, file=sys.stderr if file is None else file, **kwargs)


def main_process_first():
    """accelerate's `main_process_first` when a process group is up (the RL trainer's arguments start
    one), else nothing: the main process does the block first while the others wait."""
    import contextlib

    torch = sys.modules.get("torch")
    if torch is not None and torch.distributed.is_available() and torch.distributed.is_initialized():
        from accelerate import PartialState

        return PartialState().main_process_first()
    return contextlib.nullcontext()


def reduce(accelerator: Any, tensor: Any, op: str = "sum") -> Any:
    """The tensor summed (op "sum"), maximised ("max") or averaged ("mean") over processes."""
    if accelerator.num_processes == 1:
        return tensor
    return accelerator.reduce(tensor, reduction=op)


def sum_over_processes(accelerator: Any, values: Sequence[float], dtype: Any = None) -> list:
    """Element-wise sums over processes of a list of numbers (ints stay ints with an integer dtype)."""
    if accelerator.num_processes == 1:
        return list(values)
    import torch

    t = torch.tensor(list(values), device=accelerator.device, dtype=dtype or torch.float64)
    return reduce(accelerator, t, "sum").tolist()


def max_over_processes(accelerator: Any, value: int) -> int:
    """The largest of one int over processes (the busiest process's count of something)."""
    if accelerator.num_processes == 1:
        return value
    import torch

    t = torch.tensor([value], device=accelerator.device, dtype=torch.long)
    return int(reduce(accelerator, t, "max").item())


def gather_objects(accelerator: Any, items: list) -> list:
    """Every process's list, concatenated in rank order (picklable items)."""
    if accelerator.num_processes == 1:
        return list(items)
    from accelerate.utils import gather_object

    return gather_object(items)


def broadcast_object(accelerator: Any, obj: Any, source: int = 0) -> Any:
    """Process `source`'s object, on every process."""
    if accelerator.num_processes == 1:
        return obj
    from accelerate.utils import broadcast_object_list

    box = [obj]
    broadcast_object_list(box, from_process=source)
    return box[0]
