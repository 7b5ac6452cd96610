"""Shared test utilities: random inputs, float64 truth, tolerances, gradient collection."""
from __future__ import annotations

import os

import pytest
import torch

# Relative tolerances (||out - ref|| / ||ref||, ref computed in float64) per dtype of the inputs.
# fp32: the acceptance bounds of the psf-ops issue (measured ~2e-7). Half inputs accumulate in
# fp32 and are rounded once on the way out: measured 2.1e-4 (fp16) and 3.4e-3 (bf16) on psf_conv
# J40 k7, so the bounds below leave a 2-5x margin and still catch any real indexing error. (bf16
# is 3.4e-3 rather than ~1.7e-3 because the Triton interpreter truncates fp32 -> bf16, where a GPU
# rounds to nearest: kernel outputs equal the truncated float32 result bit for bit.)
FWD_RTOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}
GRAD_RTOL = {torch.float64: 1e-12, torch.float32: 1e-4, torch.float16: 1e-3, torch.bfloat16: 8e-3}
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def compiled_env() -> dict:
    """This environment for a subprocess that compiles (no TRITON_INTERPRET) and is no pytest-xdist
    worker (pytest-benchmark turns itself off where it sees a worker's variables)."""
    return {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET" and not k.startswith("PYTEST_XDIST")}


def rand(*shape, dtype=torch.float32, device="cpu", requires_grad=False, scale=1.0) -> torch.Tensor:
    """Fresh standard-normal values (never zeros), in ``dtype`` on ``device``."""
    t = (torch.randn(*shape, dtype=torch.float64) * scale).to(device=device, dtype=dtype)
    return t.requires_grad_(requires_grad)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64; NaN anywhere in ``out`` gives inf (never passes)."""
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    if torch.isnan(out).any():
        return float("inf")
    denom = ref.norm().item()
    return (out - ref).norm().item() / (denom if denom > 0 else 1.0)


def assert_rel_close(out, ref, rtol: float, what: str = "") -> None:
    assert out.shape == ref.shape, f"{what}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    err = rel_err(out, ref)
    assert err <= rtol, f"{what}: relative error {err:.3e} > {rtol:.1e}"


def value_and_grads(fn, inputs, grad_out=None, seed=0):
    """Run ``fn(*inputs)``; backprop a fixed random cotangent; return (outputs, grads of inputs).

    ``fn`` may return a tensor or a tuple of tensors; ``inputs`` are leaf tensors requiring grad.
    """
    out = fn(*inputs)
    outs = out if isinstance(out, tuple) else (out,)
    if grad_out is None:
        g = torch.Generator().manual_seed(seed)
        grad_out = tuple(torch.randn(o.shape, generator=g, dtype=torch.float64).to(o) for o in outs)
    grads = torch.autograd.grad(outs, [i for i in inputs if i.requires_grad], grad_out, allow_unused=True)
    return outs, grads, grad_out


def float64_leaves(*tensors):
    """Detached float64 CPU copies requiring grad: the independent truth's inputs."""
    return [t.detach().double().cpu().requires_grad_(True) for t in tensors]


def check_triton_against_truth(op, truth, inputs, what: str = "") -> None:
    """``op`` on the Triton path vs the float64 ``truth`` on the same (rounded) inputs: every
    output and every input gradient, same dtype and shape, within FWD_RTOL/GRAD_RTOL."""
    import psfops

    dtype = inputs[0].dtype
    with psfops.backend("triton"):
        outs, grads, gout = value_and_grads(op, inputs)
    touts, tgrads, _ = value_and_grads(truth, float64_leaves(*inputs), tuple(g.double().cpu() for g in gout))
    for i, (o, t) in enumerate(zip(outs, touts)):
        assert o.dtype == dtype
        assert_rel_close(o, t, FWD_RTOL[dtype], f"{what} output {i} {dtype}")
    for i, (g, t) in enumerate(zip(grads, tgrads)):
        assert g.dtype == dtype and g.shape == inputs[i].shape
        assert_rel_close(g, t, GRAD_RTOL[dtype], f"{what} grad {i} {dtype}")


def l1_training_losses(model, x, target, steps: int, lr: float) -> list[float]:
    """Losses of ``steps`` AdamW steps on one fixed batch, L1 summed over the model's outputs."""
    import torch.nn.functional as F

    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = sum(F.l1_loss(o, target) for o in model(x))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Imported into a test module, runs it on one intra-op thread: for tiny tensors, threads only
    add spin-wait contention on a shared machine (measured 1.3 s single-threaded vs 17 s with two
    threads under load for the reference adjoint sweep)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
