"""Sample inputs of the ops, for their tests and benchmarks: the sizes a sample is built from
(:class:`Shape`), one sample (:class:`Sample`), and random-input builders (fresh values, never
zeros). Each op's definition names its own sample builder (``psfops._registry.op``)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Shape:
    """Sizes a sample is built from; each op uses the ones it has (J, k, dilation: psf ops)."""
    B: int = 2
    C: int = 3
    H: int = 5
    W: int = 6
    J: int = 4
    k: int = 3
    dilation: int = 1


@dataclass(frozen=True)
class Sample:
    """Positional arguments of the public function (tensors and options, every one given, so they
    are also the forward custom op's arguments), and which variant of the op they exercise."""
    args: tuple
    label: str = ""

    @property
    def tensors(self) -> list[Tensor]:
        return [a for a in self.args if isinstance(a, Tensor)]

    def with_tensors(self, tensors) -> tuple:
        """``args`` with its tensors replaced, in order, by ``tensors`` (options kept): so a
        function of the tensors alone is ``lambda *ts: fn(*sample.with_tensors(ts))``."""
        it = iter(tensors)
        return tuple(next(it) if isinstance(a, Tensor) else a for a in self.args)


def randn(shape, dtype, device, requires_grad: bool, scale: float = 1.0) -> Tensor:
    t = (torch.randn(shape, device=device, dtype=torch.float32) * scale).to(dtype)
    return t.requires_grad_(requires_grad)


def mixing_weights(s: Shape, dtype, device, requires_grad: bool) -> Tensor:
    """(B, J, H, W) per-pixel weights that sum to 1 over J (as a softmax head gives them)."""
    w = torch.randn((s.B, s.J, s.H, s.W), device=device, dtype=torch.float32).softmax(1).to(dtype)
    return w.requires_grad_(requires_grad)


def planes(s: Shape, dtype, device, requires_grad: bool, n: int) -> list[Tensor]:
    """``n`` independent (B, C, H, W) tensors."""
    return [randn((s.B, s.C, s.H, s.W), dtype, device, requires_grad) for _ in range(n)]


def pixels(s: Shape) -> int:
    return s.B * s.H * s.W
