"""The data a run trains and validates on, and the order it draws batches in.

Validation never sees a training pair unless asked to:

- ``--data DIR`` alone: a fixed tenth of DIR's pairs (:data:`VAL_FRACTION`, at least 1, drawn
  by :func:`held_out` with :data:`SPLIT_SEED` from the natural name order) is held out; training
  draws only from the other pairs, and validation scores the first ``val_size`` held-out pairs.
- ``--val DIR2``: the first ``val_size`` pairs of DIR2, and training uses every pair of ``--data``.
  DIR2 may not be the ``--data`` folder unless ``allow_val_in_data`` (see :class:`TrainConfig`).
- no ``--data``: :class:`~sdpsfnet.data.rain.SyntheticRain`'s ``val`` split, rain rendered with
  fixed seeds on photographs that its ``train`` split never uses.

Validation images are centre-cropped to ``val_crop`` when it is set.
"""
from __future__ import annotations

import random

from torch.utils.data import Dataset, DistributedSampler, Subset

from ..data import PairedImages, check_pairs
from ..evaluation.metrics import MIN_SIDE
from .config import TrainConfig

VAL_FRACTION = 0.1  # of the pairs of --data held out for validation when no --val is given
SPLIT_SEED = 0      # fixed: the same folder gives the same split in every run


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` (seeded permutation per epoch, sharded over ranks) that can start
    ``skip`` samples into this rank's share of the epoch, for an exact mid-epoch resume."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed,
                         drop_last=True)
        self.skip = 0

    def set_position(self, epoch: int, skip: int) -> None:
        self.set_epoch(epoch)
        self.skip = skip

    def __iter__(self):
        it = super().__iter__()
        for _ in range(self.skip):
            next(it)
        return it

    def __len__(self) -> int:
        return self.num_samples - self.skip


class CenterCropped(Dataset):
    """Items (rainy, clean, name) of ``dataset`` centre-cropped to at most ``size`` x ``size``."""

    def __init__(self, dataset: Dataset, size: int):
        self.dataset, self.size = dataset, size

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i):
        rainy, clean, name = self.dataset[i]
        h, w = rainy.shape[-2:]
        th, tw = min(h, self.size), min(w, self.size)
        top, left = (h - th) // 2, (w - tw) // 2
        return rainy[:, top:top + th, left:left + tw], clean[:, top:top + th, left:left + tw], name


def held_out(n: int) -> list[int]:
    """The indices (ascending) of the pairs of an ``n``-pair folder held out for validation:
    ``round(VAL_FRACTION * n)`` of them, at least 1, drawn by ``random.Random(SPLIT_SEED)`` from
    the folder's natural name order, so the same folder always gives the same split. ValueError if
    no pair would be left to train on."""
    k = max(1, round(VAL_FRACTION * n))
    if n - k < 1:
        raise ValueError(f"--data holds {n} pair(s): holding {k} out for validation leaves none to train on; "
                         f"add pairs or give a separate --val folder")
    return sorted(random.Random(SPLIT_SEED).sample(range(n), k))


def default_datasets(cfg: TrainConfig) -> tuple[Dataset, Dataset, str]:
    """(train, val, what validates: one line for the log) for ``cfg`` (see the module docstring)."""
    if cfg.data is None:
        from ..data.rain import VAL_PHOTOS, SyntheticRain

        train_set, val_set = SyntheticRain("train", crop=cfg.crop), SyntheticRain("val", size=cfg.val_size)
        about = (f"{len(val_set)} synthetic pairs rendered with fixed seeds on the photos "
                 f"{', '.join(VAL_PHOTOS)}, which training never uses")
    else:
        train_set = PairedImages(cfg.data, crop=cfg.crop, train=True)
        val_set = PairedImages(cfg.val or cfg.data, crop=None, train=False)
        if cfg.val is None:
            val_index = held_out(len(train_set))
            kept = set(val_index)
            train_set = Subset(train_set, [i for i in range(len(train_set)) if i not in kept])
            scored = val_index[:cfg.val_size]
            first = f"the first {len(scored)} of " if len(scored) < len(val_index) else ""
            about = (f"{first}{len(val_index)} of the {len(val_set)} pairs of {cfg.data}, held out "
                     f"({VAL_FRACTION:.0%}, fixed split) and never trained on")
        else:
            scored = list(range(min(cfg.val_size, len(val_set))))
            about = f"the first {len(scored)} pairs of {cfg.val}" + (
                " (the --data folder: also trained on)" if cfg.val == cfg.data else "")
        check_pairs([val_set.pairs[i] for i in scored], MIN_SIDE, "validation (SSIM's window) needs")
        names = [val_set.pairs[i][0].stem for i in scored]
        about += ": " + ", ".join(names[:8]) + (f", ... ({len(names) - 8} more)" if len(names) > 8 else "")
        val_set = Subset(val_set, scored)
    return train_set, (val_set if cfg.val_crop is None else CenterCropped(val_set, cfg.val_crop)), about
