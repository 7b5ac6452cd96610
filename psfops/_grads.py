"""Gradients nobody asked for are not computed: every backward custom op takes ``needs``, one
bool per tensor input of its forward (autograd's ``ctx.needs_input_grad``), and returns a
0-element placeholder for each input whose gradient is not needed (custom ops cannot return
None); the autograd wrapper turns placeholders back into None. Kernels skip the work and the
writes of unneeded gradients, and where they can, the reads that only those need."""
from __future__ import annotations

import torch
from torch import Tensor


def gradient_buffers(needs, *inputs: Tensor) -> tuple[Tensor, ...]:
    """One uninitialized contiguous buffer shaped like each input whose gradient is needed, a
    0-element placeholder (same dtype and device) for the others."""
    return tuple(torch.empty_like(t, memory_format=torch.contiguous_format) if need else t.new_empty(0)
                 for need, t in zip(needs, inputs))


def for_autograd(grads, needs) -> tuple[Tensor | None, ...]:
    """The backward op's outputs as autograd wants them: None where no gradient was asked for."""
    return tuple(g if need else None for g, need in zip(grads, needs))


def needs_of(ctx, n: int) -> list[bool]:
    """``ctx.needs_input_grad`` of the first ``n`` inputs, as the ``needs`` argument."""
    return [bool(b) for b in ctx.needs_input_grad[:n]]
