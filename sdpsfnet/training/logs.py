"""What a run logs: progress lines (:func:`say`), the validation pairs (``validation.txt``,
:func:`write_validation_list`) and ``metrics.csv``: one row per optimizer step (``step``, ``epoch``, ``lr``, ``loss``,
``grad_norm``, ``seconds``), the validation columns filled on validation steps (and on the row of
step 0, before training). Rows are appended as the run goes; a resume rewrites the file atomically
with the rows up to its checkpoint."""
from __future__ import annotations

import csv
import io
import os
import sys

from tqdm import tqdm

from ..files import atomic_write

CSV_FIELDS = ["step", "epoch", "lr", "loss", "grad_norm", "seconds",
              "val_psnr_y", "val_ssim_y", "input_psnr_y", "input_ssim_y"]
VAL_FIELDS = CSV_FIELDS[6:]


def read_csv(path: str) -> list[dict]:
    if not os.path.isfile(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def logged_rows(path: str, upto: int) -> list[dict]:
    """The rows of ``metrics.csv`` at ``path`` for steps up to ``upto``; a row cut short by a kill
    (missing fields) is dropped."""
    return [r for r in read_csv(path)
            if None not in r.values() and r["step"].isdigit() and int(r["step"]) <= upto]


def write_csv(path: str, rows: list[dict]) -> None:
    """(Re)write ``metrics.csv`` atomically: the header, then ``rows``."""
    text = io.StringIO()
    writer = csv.DictWriter(text, CSV_FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    with atomic_write(path) as f:
        f.write(text.getvalue().encode())


def append_row(path: str, row: dict) -> None:
    """Append one row to ``metrics.csv``, starting the file (with its header) if there is none."""
    new = not os.path.isfile(path) or os.path.getsize(path) == 0
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, CSV_FIELDS)
        if new:
            writer.writeheader()
        writer.writerow(row)


def say(text: str, enabled: bool = True, stdout: bool = False) -> None:
    """Print one line, unless ``enabled`` is false: a progress line on stderr (through
    ``tqdm.write``, so an open bar is redrawn below it rather than broken), or with ``stdout`` a
    line of the run's log on stdout (what runs, on which data), which ``--no-progress`` keeps."""
    if enabled:
        stream = sys.stdout if stdout else sys.stderr
        tqdm.write(text, file=stream)
        stream.flush()


def write_validation_list(path: str, about: str, names: list[str]) -> None:
    """``validation.txt``: a comment line saying where the validation pairs come from, then the
    name of each validation image (for a paired folder, its rainy file's stem), one per line."""
    with atomic_write(path) as f:
        f.write(("".join(f"# {line}\n" for line in about.split("\n")) + "".join(f"{n}\n" for n in names)).encode())
