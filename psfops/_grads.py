"""How the custom ops' backward ops are called and differentiated.

Gradients nobody asked for are not computed: every backward custom op takes ``needs``, one
bool per tensor input of its forward (autograd's ``ctx.needs_input_grad``), and returns a
0-element placeholder for each input whose gradient is not needed (custom ops cannot return
None); the autograd wrapper turns placeholders back into None. Kernels skip the work and the
writes of unneeded gradients, and where they can, the reads that only those need. A second
derivative runs through the reference (:func:`differentiable_through_reference`)."""
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


def differentiable_through_reference(backward_op, unpack) -> None:
    """Make a backward custom op differentiable (double backward: gradient penalties, Hessian-vector
    products) by differentiating the reference instead of the kernels: correct, not fused.

    ``unpack(*args)`` -> (cotangents, inputs, forward) for the backward op's arguments: the
    positions of its cotangent arguments, the positions of the forward's tensor inputs (None for
    an absent optional one) and ``forward(*inputs)``, the reference forward with the op's options
    bound. The backward op's outputs are the gradients of those inputs, in order."""
    def setup(ctx, inputs, output):
        ctx.tensors = [i for i, a in enumerate(inputs) if isinstance(a, Tensor)]
        ctx.others = [None if isinstance(a, Tensor) else a for a in inputs]
        ctx.save_for_backward(*(inputs[i] for i in ctx.tensors))

    def backward(ctx, *output_grads):
        args = list(ctx.others)
        for i, t in zip(ctx.tensors, ctx.saved_tensors):
            args[i] = t
        cot_at, input_at, forward = unpack(*args)
        present = [(k, i) for k, i in enumerate(input_at) if i is not None]  # (output index, arg position)
        with torch.enable_grad():
            leaves = {i: args[i].detach().requires_grad_(True) for i in cot_at + [i for _, i in present]}
            outs = forward(*[None if i is None else leaves[i] for i in input_at])
            firsts = torch.autograd.grad(outs if isinstance(outs, tuple) else (outs,), [leaves[i] for _, i in present],
                                         [leaves[i] for i in cot_at], create_graph=True, allow_unused=True)
            pairs = [(f, output_grads[k]) for (k, _), f in zip(present, firsts)
                     if f is not None and output_grads[k] is not None and output_grads[k].shape == f.shape]
            wrt = cot_at + [i for _, i in present]
            seconds = torch.autograd.grad([f for f, _ in pairs], [leaves[i] for i in wrt], [g for _, g in pairs],
                                          allow_unused=True) if pairs else [None] * len(wrt)
        grads = [None] * len(args)
        for i, g in zip(wrt, seconds):
            grads[i] = g
        return tuple(grads)

    backward_op.register_autograd(backward, setup_context=setup)
