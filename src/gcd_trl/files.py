"""Files written whole or not at all.

Every file a run may be killed while writing (checkpoint state, rollouts, reports, caches, datasets) goes
through `write_atomic`: the content goes to a temporary file in the same folder, which is then renamed
over the target, so a reader sees the old file or the new one, never half of one. The temporary name
carries the process and thread, so concurrent writers of one path do not collide (the last rename wins).
Files are created like `open()` creates them (mode 0666 less the umask), never with mkstemp's 0600.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

_COUNTER = itertools.count()


def write_atomic(
    path: str | os.PathLike, write: Callable[[Path], Any], *, fsync: bool = False, partial: bool = False
) -> Path:
    """Call `write(tmp)` to write a temporary file beside `path`, then rename it to `path` (its folder is
    created). On any error the temporary file is removed and the target is left as it was; with `partial`
    the temporary file is `PATH.partial` and is kept on error (a long stream of records: what was written
    before the failure stays readable)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if partial:
        tmp = path.with_name(path.name + ".partial")
    else:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.{next(_COUNTER)}.tmp")
    try:
        write(tmp)
        if fsync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        if not partial:
            tmp.unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | os.PathLike, text: str, *, fsync: bool = False) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), fsync=fsync)


def write_json_atomic(path: str | os.PathLike, data: Any, *, fsync: bool = False, **dumps: Any) -> Path:
    """`json.dumps(data, **dumps)` (default indent 2), written atomically."""
    dumps.setdefault("indent", 2)
    return write_text_atomic(path, json.dumps(data, **dumps), fsync=fsync)


def write_jsonl_atomic(path: str | os.PathLike, rows: Iterable[Mapping[str, Any]]) -> Path:
    """One JSON object a line (NaN and infinities refused), written atomically."""

    def write(tmp: Path) -> None:
        with tmp.open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, allow_nan=False) + "\n")

    return write_atomic(path, write)


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike) -> Iterator[None]:
    """An exclusive lock on a file beside `folder` (`.NAME.lock`) for the duration of the block, so two
    runs writing one folder (generated games) take turns."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
