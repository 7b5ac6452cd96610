"""The data a run trains and validates on, and the order it draws batches in."""
from __future__ import annotations

from torch.utils.data import Dataset, DistributedSampler, Subset

from ..data import PairedImages, check_pairs
from ..evaluation.metrics import MIN_SIDE
from .config import TrainConfig


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


def default_datasets(cfg: TrainConfig) -> tuple[Dataset, Dataset]:
    """(train, val) datasets for ``cfg`` (see the module docstring)."""
    if cfg.data is None:
        from ..data.rain import SyntheticRain


        train_set, val_set = SyntheticRain("train", crop=cfg.crop), SyntheticRain("val", size=cfg.val_size)
    else:
        train_set = PairedImages(cfg.data, crop=cfg.crop, train=True)
        val_set = PairedImages(cfg.val or cfg.data, crop=None, train=False)
        check_pairs(val_set.pairs[:cfg.val_size], MIN_SIDE, "validation (SSIM's window) needs")
        val_set = Subset(val_set, range(min(cfg.val_size, len(val_set))))
    return train_set, (val_set if cfg.val_crop is None else CenterCropped(val_set, cfg.val_crop))
