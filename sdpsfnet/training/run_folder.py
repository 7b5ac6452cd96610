"""The run folder ``out``: what a run writes there (:data:`RUN_FILES`) and the rules that keep runs
from clobbering each other.

- **Run folders are never clobbered**: a new run into a folder holding any of :data:`RUN_FILES`
  raises ``FileExistsError`` unless ``overwrite=True``, which deletes them first. A resume writes
  into its checkpoint's folder (or into a folder without a run, continuing the logged history) and
  refuses a checkpoint older than that folder's ``last.pt`` (it would discard the later steps).
  Temporary files of a killed writer are removed when a run starts. While a run writes, rank 0
  holds an ``flock`` on ``out/.train.lock`` (:func:`run_folder_lock`): a second run into the
  folder is refused naming the first's process. ``out`` may not lie inside ``data`` or ``val``.
- **Crash between last.pt and best.pt**: the checkpoint records the step that scored best
  (``metrics["best_step"]``); resuming a checkpoint that is that step rewrites ``best.pt`` from it.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import shutil

from ..files import atomic_write, remove_stale_temps
from .checkpoint import load_checkpoint
from .config import TrainConfig
from .logs import logged_rows, write_csv

# Everything the trainer writes into ``out``: a folder holding any of them holds a run.
RUN_FILES = ("last.pt", "best.pt", "metrics.csv", "curves.png", "before_after.png", "validation.txt")


def _holds_run(folder: str) -> list[str]:
    return [name for name in RUN_FILES if os.path.exists(os.path.join(folder, name))]


def _same_file(a: str, b: str) -> bool:
    return os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b)


def check_out_folder(out: str, resume: str | None, step: int, overwrite: bool) -> None:
    """Refuse (``FileExistsError``) to clobber a run; reads only, so every rank can call it.

    A new run needs ``out`` without a run (:data:`RUN_FILES`), or ``overwrite``. A resume of a
    checkpoint at ``step`` writes into its own folder, where it must not be older than
    ``last.pt``, or into a folder without a run.
    """
    found = _holds_run(out)
    if not found or (resume is None and overwrite):
        return
    held = f"{out} already holds a run ({', '.join(found)})"
    if resume is None:
        again = ", replace it with --overwrite" if os.path.isfile(os.path.join(out, "last.pt")) else ""
        raise FileExistsError(f"{held}; {resume_advice(out)}{again}, or choose another --out")
    if not _same_file(os.path.dirname(os.path.abspath(resume)), out):
        raise FileExistsError(f"{held}; resume {resume} into its own folder or an empty --out")
    last = os.path.join(out, "last.pt")
    if os.path.isfile(last) and not _same_file(last, resume):
        later = int(load_checkpoint(last)["step"])
        if later > step:
            raise FileExistsError(f"resuming {resume} (step {step}) in {out} would discard steps "
                                  f"{step + 1}..{later} of {last}; resume from {last}, or give "
                                  f"another --out to branch off at step {step}")


def resume_advice(out: str) -> str:
    """How to go on with the run in ``out``: resume its ``last.pt``, or, stopped before its first
    checkpoint, start again."""
    last = os.path.join(out, "last.pt")
    if os.path.isfile(last):
        return f"continue it with --resume {last}"
    return "it stopped before its first checkpoint (no last.pt): start it again with --overwrite"


def refuse_out_in_data(cfg: TrainConfig) -> None:
    """ValueError if ``cfg.out`` is, or lies inside, the ``data`` or ``val`` folder: the run's
    files would land among the images (and break the dataset)."""
    out = os.path.realpath(cfg.out)
    for name in ("data", "val"):
        folder = getattr(cfg, name)
        inside = folder is not None and os.path.commonpath([out, os.path.realpath(folder)]) == os.path.realpath(folder)
        if inside:
            raise ValueError(f"--out {cfg.out} lies inside the --{name} folder {folder}: the run's files "
                             f"would be written among the images; choose an --out outside it")


LOCK_NAME = ".train.lock"


@contextlib.contextmanager
def run_folder_lock(out: str):
    """Hold an exclusive ``flock`` on ``out/.train.lock`` (which records this process's id) while
    a run writes into ``out``; ``FileExistsError`` naming the holder if another live process holds
    it. The kernel drops the lock when its process dies, so a killed run never blocks the next.
    A folder this call created is removed again if the run wrote nothing into it."""
    created = not os.path.isdir(out)
    os.makedirs(out, exist_ok=True)
    lock = os.path.join(out, LOCK_NAME)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        raise FileExistsError(f"{out} is in use by another train run (process {holder or 'unknown'}); "
                              f"wait for it to finish or stop it, or choose another --out") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        if created and os.listdir(out) == [LOCK_NAME]:  # a run that failed before writing
            with contextlib.suppress(OSError):
                os.unlink(lock)
                os.rmdir(out)
        os.close(fd)  # releases the lock


def prepare_out_folder(out: str, resume: str | None, ckpt: dict | None, overwrite: bool) -> None:
    """Rank 0, before the first write: create ``out``, delete killed writers' temporary files and,
    with ``overwrite``, the previous run's files; on resume, rewrite ``metrics.csv`` with the
    checkpoint's logged history and repair ``best.pt`` (:func:`repair_best`)."""
    os.makedirs(out, exist_ok=True)
    remove_stale_temps(out)
    if overwrite:
        for name in _holds_run(out):
            os.remove(os.path.join(out, name))
    if ckpt is not None:
        source = os.path.join(os.path.dirname(os.path.abspath(resume)), "metrics.csv")
        write_csv(os.path.join(out, "metrics.csv"), logged_rows(source, int(ckpt["step"])))
        repair_best(ckpt, resume, out)


def repair_best(ckpt: dict, resume: str, out: str) -> None:
    """Copy the checkpoint ``resume`` to ``out/best.pt`` if its step is the best-scoring one: a
    crash between writing ``last.pt`` and ``best.pt`` left ``best.pt`` stale. (When nothing
    crashed, this rewrites the same content.)"""
    best = os.path.join(out, "best.pt")
    if ckpt.get("metrics", {}).get("best_step") == ckpt["step"] and not _same_file(best, resume):
        with open(resume, "rb") as src, atomic_write(best) as dst:
            shutil.copyfileobj(src, dst)
