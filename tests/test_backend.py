"""Backend choice: auto / env var / context manager, the CPU-without-interpreter error, that
`import psfops` needs no triton and only imports, and that kernels/ imports nothing from psfops."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import psfops
from psfops import _backend
from helpers import rand


def test_context_manager_nests_and_restores(monkeypatch):
    monkeypatch.delenv("PSFOPS_BACKEND", raising=False)
    assert psfops.current_backend() == "auto"
    with psfops.backend("triton"):
        with psfops.backend("reference"):
            assert psfops.current_backend() == "reference"
        assert psfops.current_backend() == "triton"
    assert psfops.current_backend() == "auto"


def test_env_var(monkeypatch):
    monkeypatch.setenv("PSFOPS_BACKEND", "reference")
    assert psfops.current_backend() == "reference"
    with psfops.backend("triton"):
        assert psfops.current_backend() == "triton"
    monkeypatch.setenv("PSFOPS_BACKEND", "cuda")
    with pytest.raises(ValueError, match="PSFOPS_BACKEND"):
        psfops.current_backend()


def test_bad_backend_name():
    with pytest.raises(ValueError, match="backend"):
        with psfops.backend("fast"):
            pass


def test_auto_picks_the_cpu_path_on_cpu(monkeypatch):
    """auto: the CPU path for CPU tensors (the psf ops' own; the others fall back to the reference)."""
    monkeypatch.delenv("PSFOPS_BACKEND", raising=False)
    assert _backend.choose(torch.zeros(1)) == "cpu"
    x, w, b = rand(1, 2, 5, 5), rand(1, 3, 5, 5), rand(3, 3, 3)
    import psfops.cpu
    calls = []
    real = psfops.cpu.psf_conv
    monkeypatch.setattr(psfops.cpu, "psf_conv", lambda *a: calls.append(1) or real(*a))
    torch.testing.assert_close(psfops.psf_conv(x, w, b), psfops.reference.psf_conv(x, w, b))
    assert calls == [1]


def test_triton_on_cpu_without_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    x, w, b = rand(1, 2, 5, 5), rand(1, 3, 5, 5), rand(3, 3, 3)
    with psfops.backend("triton"), pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        psfops.psf_conv(x, w, b)


def test_reference_backend_runs_the_reference_on_any_device(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # would make the triton path raise on CPU
    x, w, b = rand(1, 2, 5, 5), rand(1, 3, 5, 5), rand(3, 3, 3)
    with psfops.backend("reference"):
        torch.testing.assert_close(psfops.psf_conv(x, w, b), psfops.reference.psf_conv(x, w, b), rtol=0, atol=0)


def test_import_without_triton():
    code = ("import sys; sys.modules['triton'] = None\n"
            "import torch, psfops\n"
            "assert not psfops._backend.TRITON_AVAILABLE\n"
            "x = torch.randn(1, 2, 6, 6); w = torch.randn(1, 3, 6, 6); b = torch.randn(3, 3, 3)\n"
            "y = psfops.psf_conv(x, w, b)\n"
            "with psfops.backend('triton'):\n"
            "    try:\n"
            "        psfops.psf_conv(x, w, b)\n"
            "    except RuntimeError as e:\n"
            "        assert 'triton' in str(e)\n"
            "    else:\n"
            "        raise SystemExit('no error')\n")
    subprocess.run([sys.executable, "-c", code], check=True, env={"PATH": "", "TRITON_INTERPRET": "1"})


def test_kernels_import_nothing_from_psfops():
    """kernels/ is a leaf: no module in it imports psfops (absolutely or relatively above itself)."""
    import ast
    for path in (Path(__file__).parents[1] / "kernels").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert node.level <= 1 and not (node.module or "").startswith("psfops"), (path.name, node.module)
            elif isinstance(node, ast.Import):
                assert not any(a.name.startswith("psfops") for a in node.names), path.name


def test_import_psfops_only_imports():
    """``import psfops`` installs no import hook and loads no kernel module (they are imported on
    the first Triton call)."""
    code = ("import sys; before = list(sys.meta_path)\n"
            "import psfops\n"
            "assert sys.meta_path == before, sys.meta_path\n"
            "assert not [m for m in sys.modules if m.startswith('psfops.kernels.')], sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "TRITON_INTERPRET": "0"})


def test_backend_blocks_are_per_thread(monkeypatch):
    """A thread inside ``backend("reference")`` does not see another thread's ``"triton"``, and
    leaving its block does not pop the other thread's entry."""
    import threading
    monkeypatch.delenv("PSFOPS_BACKEND", raising=False)
    inside, release, seen = threading.Event(), threading.Event(), {}

    def other():
        with psfops.backend("reference"):
            inside.set()
            release.wait(10)
            seen["other"] = psfops.current_backend()
        seen["other after"] = psfops.current_backend()

    with psfops.backend("triton"):
        t = threading.Thread(target=other)
        t.start()
        inside.wait(10)
        seen["main"] = psfops.current_backend()
        release.set()
        t.join(10)
        seen["main after"] = psfops.current_backend()
    assert seen == {"main": "triton", "other": "reference", "other after": "auto", "main after": "triton"}


def test_ops_from_several_threads_at_once(device):
    """Triton ops called from 4 threads at once give the results of the same calls made one after
    another (the interpreter's launches take turns; on a GPU the streams do)."""
    from concurrent.futures import ThreadPoolExecutor
    inputs = [(rand(1, 3, 7, 9, device=device), rand(1, 4, 7, 9, device=device).softmax(1),
               rand(4, 3, 3, device=device)) for _ in range(4)]

    def run(args):
        with psfops.backend("triton"):
            return psfops.psf_conv(*args), psfops.gated_blend(args[0], args[0] * 2, args[0])

    serial = [run(a) for a in inputs]
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(run, inputs))
    for got, want in zip(parallel, serial):
        for g, w in zip(got, want):
            assert torch.equal(g, w)


def test_check_triton_runs_on_is_public_and_names_the_way_out(monkeypatch):
    """The one public question 'can the Triton kernels run on this device here?': in the
    interpreter (this suite) a CPU tensor can; without it, the error says what to do."""
    psfops.check_triton_runs_on(torch.device("cpu"))
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="move them to CUDA"):
        psfops.check_triton_runs_on(torch.device("cpu"))
