"""One definition per op: :func:`op` turns a documented public function and a description (its
check, kernels, output shapes, backward, reference, sample inputs) into the op a user calls, the
``torch.library`` custom ops behind it (forward and backward, each with a fake implementation),
registered autograd, a double backward, and the op's row of the op table (``psfops.testing.OPS``).

The calling conventions every definition follows:

- The forward custom op ``psfops::NAME`` takes the public function's arguments, all of them,
  positionally (its schema is inferred from the function's annotations).
- The backward custom op ``psfops::NAME_backward`` takes ``(*cotangents, *forward arguments,
  *saved outputs, needs)``: the cotangents of the differentiable outputs, the forward's
  arguments, the forward outputs listed in ``saved_outputs``, and ``needs``, one bool per tensor
  argument of the forward (autograd's ``needs_input_grad``). It returns one tensor per tensor
  argument: the gradient where ``needs`` asks for it, a 0-element placeholder elsewhere (custom
  ops cannot return None). Kernels skip the work and the writes of unneeded gradients.
- A second derivative runs through the reference: the backward op's autograd differentiates the
  reference's first derivative (correct, not fused).
- Under forward-mode AD (``torch.autograd.forward_ad``, ``torch.func.jvp``/``jacfwd``) and the other
  ``torch.func`` transforms (``grad``, ``vmap``, ``jacrev``) the op runs the reference, which torch
  differentiates natively: the custom ops have no forward-mode formula, and would otherwise give a
  zero tangent without a word.
"""
from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
from typing import Any, Callable

import torch
import torch.autograd.forward_ad as forward_ad
from torch import Tensor

from . import _checks
from ._backend import choose, current_backend

__all__ = ["op", "Op", "kernels", "REGISTERED"]


class _Kernels:
    """``kernels.psf`` is ``psfops.kernels.psf``, imported on first use (it needs triton; the
    reference and the fake implementations do not)."""

    def __getattr__(self, module: str):
        return importlib.import_module(f"psfops.kernels.{module}")


kernels = _Kernels()


@dataclasses.dataclass(frozen=True)
class Op:
    """A registered op: its public function, reference, custom ops and op-table data.

    ``samples(shape, dtype, device, requires_grad=False)`` -> one ``Sample`` per variant of the op
    (each kernel path), fresh random values (never zeros), the first being the op's usual use;
    ``axes``: the ``Shape`` sizes the op has (of B, C, H, J, k; W follows H in benchmarks);
    ``bench_shape``: its base benchmark shape; ``flops(shape)``: forward FLOPs of the op's math
    (multiply-add = 2, sigmoid/tanh/exp = 1; no recomputation, no materialized intermediates).
    """
    name: str
    function: Callable
    reference: Callable
    forward: Any   # torch.ops.psfops.<name>
    backward: Any  # torch.ops.psfops.<name>_backward
    samples: Callable
    axes: tuple[str, ...]
    bench_shape: dict
    flops: Callable
    differentiable_outputs: int = 1
    saved_outputs: tuple[int, ...] = ()

    def make_backward_args(self, args: tuple, outputs: tuple, grads: tuple) -> tuple:
        """The backward op's arguments before ``needs``, from the forward's arguments and outputs
        and the cotangents of its differentiable outputs."""
        return (*grads, *args, *(outputs[i] for i in self.saved_outputs))


REGISTERED: dict[str, Op] = {}


def _needs_reference(args) -> bool:
    """Whether a tensor argument carries a forward-mode tangent or is wrapped by a torch.func
    transform (the custom ops serve neither; see the module docstring)."""
    if torch.compiler.is_compiling():
        return False
    return any(isinstance(a, Tensor) and (torch._C._functorch.is_functorch_wrapped_tensor(a)
                                          or forward_ad.unpack_dual(a).tangent is not None) for a in args)


def _as_tuple(outs) -> tuple:
    return outs if isinstance(outs, tuple) else (outs,)


def gradient_buffers(needs, tensors, like: Tensor) -> tuple[Tensor, ...]:
    """The backward op's outputs as its fake implementation gives them: a contiguous buffer shaped
    like each tensor argument whose gradient is needed, a 0-element placeholder (of ``like``'s dtype
    and device where the argument is an absent optional tensor) for the others."""
    return tuple(torch.empty_like(t, memory_format=torch.contiguous_format) if need
                 else (like if t is None else t).new_empty(0) for need, t in zip(needs, tensors))


def op(*, check: Callable, kernel: Callable, backward_kernel: Callable, reference: Callable,
       outputs: Callable, samples: Callable, axes: tuple[str, ...], bench_shape: dict, flops: Callable,
       cotangents: tuple[str, ...] = ("grad",), saved_outputs: dict[int, str] | None = None,
       result: Callable = lambda outs: outs, cpu: Callable | None = None):
    """Decorator: the documented public function ``NAME(...)`` (its body is not run; its signature,
    annotations and docstring are the op's) becomes a registered op.

    ``check(*args)``: raises ``TypeError``/``ValueError`` naming a bad argument (metadata only).
    ``kernel(*args)``: the Triton forward; its outputs, ``outputs(*args)`` -> ((shape, dtype), ...)
    says their shapes and dtypes. ``backward_kernel(*cotangents, *args, *saved, needs)``: the
    Triton backward (see the module docstring). ``reference(*args)``: the unchecked pure-PyTorch
    result as the public function returns it (``result(outs)`` of the forward op's outputs: e.g.
    only the first, where the op also returns statistics for its backward). ``cpu(*args)``: the
    CPU path's implementation, or None (the reference serves). ``cotangents``: the names of the
    backward op's cotangent arguments, one per differentiable output. ``saved_outputs``: the
    forward outputs the backward op also takes, {output index: argument name}.
    """
    saved_outputs = saved_outputs or {}

    def register(public: Callable) -> Callable:
        name = public.__name__
        params = inspect.signature(public).parameters
        n_out, n_cot = len(outputs(*_sample_args(samples))), len(cotangents)
        arg_schema = torch.library.infer_schema(public, mutates_args=()).rsplit(" -> ", 1)[0]
        schema = f"{arg_schema} -> {'(' + ', '.join(['Tensor'] * n_out) + ')' if n_out > 1 else 'Tensor'}"
        forward_args = list(torch._C.parse_schema(f"x::{name}{schema}").arguments)
        tensor_at = [i for i, a in enumerate(forward_args) if "Tensor" in str(a.type)]

        def check_backward(*bargs):
            cots, args = bargs[:n_cot], bargs[n_cot:n_cot + len(forward_args)]
            saved, needs = bargs[n_cot + len(forward_args):-1], bargs[-1]
            check(*args)
            _checks.check_needs(needs, len(tensor_at))
            for i, need in zip(tensor_at, needs):
                if need and args[i] is None:
                    raise ValueError(f"needs asks for the gradient of {forward_args[i].name}, which is None")
            metas = outputs(*args)
            like = args[tensor_at[0]]
            inputs = ", ".join(forward_args[i].name for i in tensor_at if args[i] is not None)
            for what, t, j in [*zip(cotangents, cots, range(n_cot)),
                               *zip(saved_outputs.values(), saved, saved_outputs)]:
                _checks.check_output_like(what, t, *metas[j], like.device, inputs)
            return args, like

        def forward_fake(*args, **kwargs):
            args = _full_arguments(name, params, args, kwargs)
            check(*args)
            device = args[tensor_at[0]].device
            outs = tuple(torch.empty(shape, dtype=dtype, device=device) for shape, dtype in outputs(*args))
            return outs if n_out > 1 else outs[0]

        def forward_real(*args, **kwargs):
            args = _full_arguments(name, params, args, kwargs)
            check(*args)
            return kernel(*args)

        def backward_fake(*bargs):
            args, like = check_backward(*bargs)
            grads = gradient_buffers(bargs[-1], [args[i] for i in tensor_at], like)
            return grads if len(grads) > 1 else grads[0]

        def backward_real(*bargs):
            check_backward(*bargs)
            grads = backward_kernel(*bargs)
            return grads if len(grads) > 1 else grads[0]

        forward_op = torch.library.custom_op(f"psfops::{name}", forward_real, mutates_args=(), schema=schema)
        forward_op.register_fake(forward_fake)
        arg_decls = re.sub(r"=[^,]*", "", arg_schema[1:-1])  # the forward's arguments, without defaults
        cot_decls = "".join(f"Tensor {c}, " for c in cotangents)
        saved_decls = "".join(f"Tensor {n}, " for n in saved_outputs.values())
        returns = ", ".join(["Tensor"] * len(tensor_at))
        backward_schema = f"({cot_decls}{arg_decls}, {saved_decls}bool[] needs) -> ({returns})"
        backward_op = torch.library.custom_op(f"psfops::{name}_backward", backward_real, mutates_args=(),
                                              schema=backward_schema)
        backward_op.register_fake(backward_fake)

        def setup_context(ctx, inputs, output):
            outs = _as_tuple(output)
            inputs = _full_arguments(name, params, tuple(inputs), {})
            ctx.args = [None if isinstance(a, Tensor) else a for a in inputs]
            ctx.save_for_backward(*(inputs[i] for i in tensor_at), *(outs[j] for j in saved_outputs))
            ctx.mark_non_differentiable(*outs[n_cot:])

        def backward(ctx, *grads):
            saved = ctx.saved_tensors
            args = list(ctx.args)
            for i, t in zip(tensor_at, saved):
                args[i] = t
            if any(g is None for g in grads[:n_cot]):  # an output that did not reach the loss
                metas = outputs(*args)
                like = args[tensor_at[0]]
                grads = tuple(torch.zeros(metas[j][0], dtype=metas[j][1], device=like.device) if g is None else g
                              for j, g in enumerate(grads[:n_cot]))
            given = len(ctx.needs_input_grad)  # (a caller may leave out trailing defaults)
            needs = [i < given and bool(ctx.needs_input_grad[i]) and args[i] is not None for i in tensor_at]
            result_grads = _as_tuple(backward_op(*grads[:n_cot], *args, *saved[len(tensor_at):], needs))
            out: list = [None] * len(args)
            for i, g, need in zip(tensor_at, result_grads, needs):
                out[i] = g if need else None
            return tuple(out[:given])

        forward_op.register_autograd(backward, setup_context=setup_context)
        _differentiable_through_reference(backward_op, n_cot, len(forward_args), tensor_at, reference)

        def call(*args, **kwargs):
            full = _full_arguments(name, params, args, kwargs)
            check(*full)
            first = full[tensor_at[0]]
            backend = "reference" if _needs_reference(full) else choose(first)
            if backend == "triton":
                return result(forward_op(*full))
            if backend == "cpu" and cpu is not None:
                return cpu(*full)
            # TEMPORARY wiring for measurement (merged from wt-cpu): backend "auto" on CPU tensors -> psfops.cpu
            if (backend == "reference" and cpu is not None and current_backend() == "auto"
                    and isinstance(first, Tensor) and first.device.type == "cpu" and not _needs_reference(full)):
                return cpu(*full)
            return reference(*full)

        call = _wraps(public, call)
        REGISTERED[name] = Op(name, call, getattr(importlib.import_module("psfops.reference"), name),
                              getattr(torch.ops.psfops, name), getattr(torch.ops.psfops, f"{name}_backward"),
                              samples, axes, bench_shape, flops, n_cot, tuple(saved_outputs))
        return call
    return register


def _full_arguments(name: str, params, args: tuple, kwargs: dict) -> tuple:
    """Every argument of a call, positionally, defaults filled in (``inspect.Signature.bind``
    without the inspect module, which torch.compile does not trace)."""
    if len(args) > len(params):
        raise TypeError(f"{name}() takes {len(params)} arguments but {len(args)} were given")
    names = list(params)
    unknown = set(kwargs) - set(names[len(args):])
    if unknown:
        raise TypeError(f"{name}() got an unexpected or repeated keyword argument {sorted(unknown)[0]!r}")
    rest = []
    for n in names[len(args):]:
        if n in kwargs:
            rest.append(kwargs[n])
        elif params[n].default is inspect.Parameter.empty:
            raise TypeError(f"{name}() missing required argument {n!r}")
        else:
            rest.append(params[n].default)
    return (*args, *rest)


def _wraps(public: Callable, call: Callable) -> Callable:
    """``call`` with ``public``'s name, docstring, module and signature."""
    call.__name__, call.__qualname__, call.__doc__ = public.__name__, public.__qualname__, public.__doc__
    call.__module__, call.__signature__ = public.__module__, inspect.signature(public)
    call.__wrapped__ = public
    return call


def _sample_args(samples: Callable) -> tuple:
    """Arguments of the op's first sample on the meta device (to count its outputs)."""
    from ._samples import Shape
    return samples(Shape(), torch.float32, "meta")[0].args


def _differentiable_through_reference(backward_op, n_cot: int, n_args: int, tensor_at: list[int],
                                      reference: Callable) -> None:
    """Double backward: the backward op's arguments (cotangents, forward arguments, saved outputs,
    needs) are differentiated through the reference's first derivative."""
    def setup(ctx, inputs, output):
        ctx.tensors = [i for i, a in enumerate(inputs) if isinstance(a, Tensor)]
        ctx.others = [None if isinstance(a, Tensor) else a for a in inputs]
        ctx.save_for_backward(*(inputs[i] for i in ctx.tensors))

    def backward(ctx, *output_grads):
        bargs = list(ctx.others)
        for i, t in zip(ctx.tensors, ctx.saved_tensors):
            bargs[i] = t
        args = bargs[n_cot:n_cot + n_args]
        present = [(k, i) for k, i in enumerate(tensor_at) if args[i] is not None]  # (gradient index, arg index)
        with torch.enable_grad():
            cots = [bargs[c].detach().requires_grad_(True) for c in range(n_cot)]
            leaves = {i: args[i].detach().requires_grad_(True) for _, i in present}
            outs = _as_tuple(reference(*[leaves.get(i, a) for i, a in enumerate(args)]))
            firsts = torch.autograd.grad(outs[:n_cot], [leaves[i] for _, i in present], cots, create_graph=True,
                                         allow_unused=True)
            pairs = [(f, output_grads[k]) for (k, _), f in zip(present, firsts)
                     if f is not None and output_grads[k] is not None and output_grads[k].shape == f.shape]
            wrt = cots + [leaves[i] for _, i in present]
            seconds = torch.autograd.grad([f for f, _ in pairs], wrt, [g for _, g in pairs],
                                          allow_unused=True) if pairs else [None] * len(wrt)
        grads = [None] * len(bargs)
        for c in range(n_cot):
            grads[c] = seconds[c]
        for (_, i), g in zip(present, seconds[n_cot:]):
            grads[n_cot + i] = g
        return tuple(grads)

    backward_op.register_autograd(backward, setup_context=setup)
