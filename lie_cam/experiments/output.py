"""Result folders that are complete or untouched: every command writes through `staged_output`.

A command's files are first written into a fresh hidden staging folder (a sibling `.NAME.partial-*`
of the output folder, or inside it when it already exists, so that the staging folder is on the same
file system); only when all of them are written are they renamed into place, with Ctrl-C (SIGINT)
and SIGTERM held back for the few renames, and the files the command wrote in an earlier run but not
in this one removed. So after an interruption at any moment the folder holds either all of this
run's files or exactly what it held before; other files in it (another command's results) are left
alone. `check_output_dir` refuses, before any work, an output path that no run could write.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import tempfile
import threading
from pathlib import Path
from typing import Iterable, Iterator

__all__ = ["check_output_dir", "staged_output", "held_signals", "link_or_copy"]

_HELD = (signal.SIGINT, signal.SIGTERM)


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def check_output_dir(out: str | os.PathLike, names: Iterable[str] = ()) -> Path:
    """`out` as an absolute Path if a run can write its files `names` there: an existing writable
    folder, or a path whose nearest existing parent is a writable folder (created only when the
    files are in place). Writability is tried (a temporary folder made and removed), since
    permissions alone do not tell (root under /proc, a read-only mount). Raises ValueError for an
    empty path, NotADirectoryError / IsADirectoryError / PermissionError naming the path otherwise."""
    if not isinstance(out, (str, os.PathLike)):
        raise TypeError(f"--out must be a folder path, got {type(out).__name__}")
    if not str(os.fspath(out)).strip():
        raise ValueError("--out is empty: give the folder for the results (it is created if missing)")
    out = Path(out).expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} exists and is not a folder: give a folder for the results")
    parent = _nearest_existing(out)
    if not parent.is_dir():
        raise NotADirectoryError(f"--out {out} lies under {parent}, which is a file, not a folder")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=f".{out.name}.probe-", dir=parent))
    except OSError as error:
        raise PermissionError(f"--out {out}: cannot write in {parent} ({error.strerror or error})") from None
    for name in names:
        if (out / name).is_dir():
            raise IsADirectoryError(f"--out {out}: {out / name} is a folder, so the result file cannot be written")
    return out


@contextlib.contextmanager
def held_signals() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back inside the block (main thread only); one that arrived is
    delivered on exit, with the handlers that were in place before."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived: list[int] = []
    previous = {s: signal.signal(s, lambda number, frame: arrived.append(number)) for s in _HELD}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, signal.SIG_DFL if handler is None else handler)
        for number in dict.fromkeys(arrived):
            signal.raise_signal(number)


def _move_into_place(stage: Path, out: Path, names: tuple[str, ...]) -> None:
    """The renames, under `held_signals`: a new `out` at once, or each name of an existing one."""
    with held_signals():
        if not out.exists():
            os.rename(stage, out)
            return
        for name in names:
            new, old = stage / name, out / name
            if new.exists() or new.is_symlink():
                os.replace(new, old)
            elif old.is_file() or old.is_symlink():  # the earlier run's file this run does not write
                old.unlink()


def _new_folder(parent: Path, prefix: str) -> Path:
    """A new empty folder in `parent` with the usual permissions (mkdtemp's are owner-only)."""
    for _ in range(100):
        folder = parent / f"{prefix}{secrets.token_hex(4)}"
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue
    raise FileExistsError(f"could not make a staging folder in {parent}")


@contextlib.contextmanager
def staged_output(out: str | os.PathLike, names: Iterable[str]) -> Iterator[Path]:
    """A fresh folder to write this run's files `names` into; on a normal exit they are moved into
    `out` (created with its parents if missing) as described in the module's docstring, on an
    exception (KeyboardInterrupt included) the staging folder is removed and `out` is as it was.
    Files written into the stage under other names are not moved."""
    names = tuple(names)
    out = check_output_dir(out, names)
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
    stage = _new_folder(out if out.exists() else out.parent, ".partial-" if out.exists() else f".{out.name}.partial-")
    try:
        yield stage
        if not out.exists():
            for extra in [p for p in stage.iterdir() if p.name not in names]:
                shutil.rmtree(extra) if extra.is_dir() and not extra.is_symlink() else extra.unlink()
        _move_into_place(stage, out, names)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)


def link_or_copy(source: Path, target: Path) -> None:
    """`target` as a hard link to the file `source` (no bytes copied), or a copy where links are refused."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
