"""MSPFN (sdpsfnet/mspfn.py): shapes, the authors' layers (signed range, box pyramid, biases,
PReLUs, init), ConvLSTM recurrence, backend parity, training, size."""
from __future__ import annotations

import csv
import importlib
import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import psfops
from sdpsfnet import build_model
from sdpsfnet.models.mspfn import ConvLSTM, MSPFNConfig

from helpers import assert_rel_close, l1_training_losses, rand


def _tiny(**kw):
    torch.manual_seed(0)
    return build_model("mspfn-tiny", **kw)


# ---------------------------------------------------------------- shapes and the image contract

@pytest.mark.parametrize("shape", [(2, 3, 13, 7), (3, 3, 9, 20), (1, 3, 1, 5)])
def test_output_is_list_of_images_of_input_shape(shape):
    model = _tiny()
    x = torch.rand(*shape)
    out = model(x)
    assert isinstance(out, list) and len(out) >= 1
    for y in out:
        assert y.shape == x.shape and y.dtype == x.dtype and torch.isfinite(y).all()
    assert (out[-1] - x).abs().max() > 0  # a fresh model predicts some rain


def test_batch_items_are_independent():
    """A batch of 3 gives what each image gives alone (no state leaks across the batch)."""
    model = _tiny().eval()
    x = torch.rand(3, 3, 11, 14)
    whole = model(x)[-1]
    for b in range(3):
        assert_rel_close(whole[b:b + 1], model(x[b:b + 1])[-1], 1e-5, f"item {b}")


@pytest.mark.parametrize("size, pad, mode", [((13, 7), (0, 1, 0, 3), "reflect"),
                                             ((2, 9), (0, 7, 0, 6), "replicate")])
def test_odd_size_is_padded_then_cropped(size, pad, mode):
    """Documented contract: H, W are padded bottom/right to a multiple of 2**S (8), reflect (or
    replicate when the image is too small to reflect), and the output is cropped back."""
    model = _tiny().eval()
    x = torch.rand(2, 3, *size)
    padded = F.pad(x, pad, mode=mode)  # a multiple of 8: needs no padding
    assert_rel_close(model.rain(x), model.rain(padded)[..., :size[0], :size[1]], 1e-6, "crop")


def test_network_works_on_the_signed_range():
    """The authors feed image/127.5 - 1: the network sees 2x - 1 and subtracts its rain there, so
    in [0, 1] terms derained = x - rain(2x - 1) / 2."""
    model = _tiny().eval()
    x = torch.rand(2, 3, 16, 8)
    seen = []
    model.heads[0].register_forward_hook(lambda m, inp, out: seen.append(inp[0]))
    y = model(x)[-1]
    torch.testing.assert_close(seen[0], 2 * x - 1, rtol=0, atol=0)
    assert_rel_close(y, x - 0.5 * model.rain(2 * x - 1), 1e-7, "derained")


@pytest.mark.parametrize("pyramid", ["box", "gaussian"])
def test_input_pyramid(pyramid):
    """Box (default): 2x2 averages per level, so the 1/4 level is the 4x4 average (the code's
    downscale2/downscale4). Gaussian (the paper text): 5x5 binomial blur, replicate pad, stride 2."""
    model = _tiny(pyramid=pyramid).eval()
    assert MSPFNConfig().pyramid == "box"
    x = torch.rand(1, 3, 16, 24)
    seen = []
    for head in model.heads:
        head.register_forward_hook(lambda m, inp, out: seen.append(inp[0]))
    model(x)
    s = 2 * x - 1
    if pyramid == "box":
        expect = [s, F.avg_pool2d(s, 2), F.avg_pool2d(s, 4)]
    else:
        taps = torch.tensor([1.0, 4, 6, 4, 1]) / 16
        blur = lambda t: F.conv2d(F.pad(t, (2,) * 4, mode="replicate"),  # noqa: E731
                                  torch.outer(taps, taps).expand(3, 1, 5, 5), stride=2, groups=3)
        expect = [s, blur(s), blur(blur(s))]
    for got, want in zip(seen, expect):
        assert_rel_close(got, want, 1e-6, pyramid)


def test_layers_are_the_authors():
    """No bias on plain/transposed convs (conv_layer/deconv_layer); biases in the channel-attention
    blocks (tf.layers.conv2d) and the ConvLSTM; every PReLU per channel starting at 0, the
    attention squeeze's included."""
    from sdpsfnet.models.blocks import CAB
    model = _tiny()
    cab_convs = {id(m) for c in model.modules() if isinstance(c, CAB) for m in c.modules()
                 if isinstance(m, torch.nn.Conv2d)}
    lstm_convs = {id(m.gates) for m in model.modules() if isinstance(m, ConvLSTM)}
    convs = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    assert cab_convs and lstm_convs
    for m in convs:
        assert (m.bias is not None) == (id(m) in cab_convs or id(m) in lstm_convs), m
    prelus = [m for m in model.modules() if isinstance(m, torch.nn.PReLU)]
    assert prelus and all(p.num_parameters > 1 and p.weight.abs().max() == 0 for p in prelus)
    cab = next(m for m in model.modules() if isinstance(m, CAB))
    assert isinstance(cab.ca.mlp[1], torch.nn.PReLU) and cab.ca.mlp[1].num_parameters == model.config.channels // 4


def test_xavier_init():
    """Xavier-uniform conv weights (bound sqrt(6 / (fan_in + fan_out))), zero biases; the ConvLSTM
    gates truncated normal std 1e-3 with the forget-gate bias at 1."""
    model = build_model("mspfn-tiny", channels=32)
    lstm = {id(m.gates) for m in model.modules() if isinstance(m, ConvLSTM)}
    for m in model.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)) and id(m) not in lstm:
            w = m.weight
            bound = math.sqrt(6 / ((w.shape[0] + w.shape[1]) * w[0, 0].numel()))
            assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound, m
            if w.numel() > 2000:
                assert w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.1), m
            assert m.bias is None or m.bias.abs().max() == 0
    for m in model.modules():
        if isinstance(m, ConvLSTM):
            assert m.gates.weight.abs().max() <= 2e-3 and m.gates.weight.std() > 5e-4
            h = m.hidden
            assert torch.equal(m.gates.bias, torch.cat([torch.zeros(h), torch.ones(h), torch.zeros(2 * h)]))


# ---------------------------------------------------------------- ConvLSTM

def _unrolled(cell: ConvLSTM, x, h, c, steps):
    """Independent truth in float64: conv over [x, h] + psfops.reference.lstm_cell, by hand."""
    w, b = cell.gates.weight.double(), cell.gates.bias.double()
    x, h, c = x.double(), h.double(), c.double()
    for _ in range(steps):
        gates = F.conv2d(torch.cat([x, h], 1), w, b, padding=w.shape[-1] // 2)
        h, c = psfops.reference.lstm_cell(gates, c)
    return h, c


@pytest.mark.parametrize("steps", [1, 3])
def test_convlstm_equals_hand_unrolled_loop(steps):
    torch.manual_seed(1)
    cell = ConvLSTM(in_channels=3, hidden=5, kernel_size=3, steps=steps)
    with torch.no_grad():
        cell.gates.bias.normal_()
    x, h0, c0 = rand(2, 3, 9, 7), rand(2, 5, 9, 7), rand(2, 5, 9, 7)
    h, (h_state, c_state) = cell(x, (h0, c0))
    assert h.shape == h_state.shape == c_state.shape == (2, 5, 9, 7)
    assert h is h_state
    h_ref, c_ref = _unrolled(cell, x, h0, c0, steps)
    assert_rel_close(h, h_ref, 1e-5, "h")
    assert_rel_close(c_state, c_ref, 1e-5, "c")


def test_convlstm_zero_initial_state():
    """state=None is the zero state; at the first step c = sigmoid(i)*tanh(g), so neither the
    h-part of the gate conv nor the forget gate receive gradient."""
    torch.manual_seed(2)
    hid = 4
    cell = ConvLSTM(in_channels=3, hidden=hid, steps=1)
    x = rand(2, 3, 8, 6)
    h, (_, c) = cell(x)
    z = torch.zeros(2, hid, 8, 6)
    h_ref, c_ref = _unrolled(cell, x, z, z, 1)
    assert_rel_close(h, h_ref, 1e-5, "h")
    g = F.conv2d(x.double(), cell.gates.weight[:, :3].double(), cell.gates.bias.double(), padding=1)
    i, _, gg, o = g.chunk(4, 1)
    c_direct = torch.sigmoid(i) * torch.tanh(gg)
    assert_rel_close(c, c_direct, 1e-5, "c from input gates only")
    assert_rel_close(h, torch.sigmoid(o) * torch.tanh(c_direct), 1e-5, "h")

    (h * rand(*h.shape)).sum().backward()
    gw, gb = cell.gates.weight.grad, cell.gates.bias.grad
    assert gw[:, 3:].abs().max() == 0, "h_prev = 0 part of the conv got gradient"
    assert gb[hid:2 * hid].abs().max() == 0, "forget gate got gradient with c_prev = 0"
    assert gw[:, :3].abs().max() > 0 and gb[:hid].abs().max() > 0


def test_convlstm_recurs():
    """More steps change the output (the recurrence is real), and T=2 from zeros equals T=1 twice."""
    torch.manual_seed(3)
    one = ConvLSTM(3, 4, steps=1)
    two = ConvLSTM(3, 4, steps=2)
    two.load_state_dict(one.state_dict())
    x = rand(1, 3, 6, 6)
    h1, s1 = one(x)
    h2, _ = two(x)
    assert (h2 - h1).abs().max() > 1e-4
    assert_rel_close(h2, one(x, s1)[0], 1e-6, "T=2 vs two T=1 calls")


def test_model_calls_lstm_cell_per_scale_and_step(monkeypatch):
    """The ConvLSTM update goes through psfops.lstm_cell: S scales x lstm_steps calls."""
    calls = []
    real = psfops.lstm_cell

    def spy(gates, c):
        calls.append(gates.shape)
        return real(gates, c)

    monkeypatch.setattr(psfops, "lstm_cell", spy)
    model = _tiny()
    model(torch.rand(1, 3, 16, 8))
    cfg = model.config
    assert len(calls) == cfg.num_scales * cfg.lstm_steps
    assert sorted({s[1] for s in calls}) == sorted(4 * h for h in cfg.lstm_hidden)


# ---------------------------------------------------------------- backends

@pytest.mark.parametrize("name", ["reference", "triton"])
def test_backend_is_in_force_during_forward(monkeypatch, name):
    seen = []
    real = psfops.lstm_cell
    monkeypatch.setattr(psfops, "lstm_cell", lambda g, c: (seen.append(psfops.current_backend()), real(g, c))[1])
    _tiny(backend=name)(torch.rand(1, 3, 8, 8))
    assert seen and set(seen) == {name}
    seen.clear()
    with psfops.backend(name):  # "auto" leaves the ambient choice in force
        _tiny()(torch.rand(1, 3, 8, 8))
    assert seen and set(seen) == {name}


def test_backend_triton_matches_reference(monkeypatch):
    """mspfn-tiny on psfops' Triton ops (interpreter on CPU) vs psfops.reference: outputs and
    parameter gradients within rtol 1e-4 (float32)."""
    registry = importlib.import_module("psfops._registry")
    picked = []
    real_choose = registry.choose

    def choose(t):
        picked.append(real_choose(t))
        return picked[-1]
    monkeypatch.setattr(registry, "choose", choose)
    ref = _tiny(backend="reference")
    tri = _tiny(backend="triton")
    tri.load_state_dict(ref.state_dict())
    torch.manual_seed(4)
    x = torch.rand(1, 3, 12, 12)
    cot = torch.randn(1, 3, 12, 12)
    results = []
    for model in (ref, tri):
        y = model(x)[-1]
        (y * cot).sum().backward()
        results.append((y.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (y_r, g_r), (y_t, g_t) = results
    n_calls = len(picked) // 2
    assert n_calls > 0 and picked == ["reference"] * n_calls + ["triton"] * n_calls  # the kernels really ran
    assert_rel_close(y_t, y_r, 1e-4, "output")
    assert g_r.keys() == g_t.keys()
    for n in g_r:
        assert_rel_close(g_t[n], g_r[n], 1e-4, f"grad {n}")


# ---------------------------------------------------------------- training

def test_adamw_steps_reduce_l1_loss():
    model = _tiny()
    torch.manual_seed(5)
    clean = F.avg_pool2d(torch.rand(2, 3, 16, 16), 3, 1, 1)      # smooth "background"
    streaks = (torch.rand(2, 1, 16, 16) > 0.9).float().expand(2, 3, 16, 16) * 0.5
    rainy = (clean + streaks).clamp(0, 1)
    losses = l1_training_losses(model, rainy, clean, steps=10, lr=1e-3)
    assert losses[-1] < 0.8 * losses[0], losses  # measured: about 0.66


# ---------------------------------------------------------------- configuration and size

def _expected_params(c: MSPFNConfig) -> int:
    """Parameter count from the authors' layers: plain convs without bias + a per-channel PReLU;
    channel-attention blocks and the ConvLSTM with biases."""
    C, S, k, r = c.channels, c.num_scales, 3, c.reduction
    conv = lambda i, o, kk=k: i * o * kk * kk  # noqa: E731
    conv_act = lambda i, o: conv(i, o) + o  # noqa: E731
    up = conv_act(C, C)
    cab = 2 * (conv(C, C) + C) + C + (C * (C // r) + C // r) + C // r + (C // r * C + C)
    carries = S * (S - 1) // 2 * up                          # one up per (coarser, finer) pair
    heads = S * conv_act(c.in_channels, C)
    coarse = carries + sum(conv_act(C, c.lstm_in) + conv(c.lstm_in + h, 4 * h, c.lstm_kernel) + 4 * h
                           + conv_act(h, C) for h in c.lstm_hidden)
    fine = c.num_fusion * (carries + sum(conv_act(C, C) + n * cab + conv_act(2 * C, C) for n in c.cabs_per_scale))
    recon = S * conv_act(2 * C, C) + conv_act(C, C) + (S - 2) * conv_act(2 * C, C)
    tail = conv_act(2 * C, c.recon_channels) + conv(c.recon_channels, c.in_channels)
    return heads + coarse + fine + recon + tail


def test_mspfn_parameter_count():
    with torch.device("meta"):
        model = build_model("mspfn")
    n = sum(p.numel() for p in model.parameters())
    cfg = model.config
    assert (cfg.channels, cfg.lstm_hidden, cfg.num_fusion, cfg.cabs_per_scale) == (64, (256, 128, 64), 17, (3, 3, 1))
    assert n == _expected_params(cfg) == 20_995_776


def test_tiny_parameter_count_matches_formula():
    model = _tiny()
    assert sum(p.numel() for p in model.parameters()) == _expected_params(model.config)


def test_config_overrides_and_errors():
    model = _tiny(channels=8, num_fusion=1, pyramid="gaussian", lstm_hidden=[6, 5, 4])
    assert (model.config.channels, model.config.num_fusion, model.config.lstm_hidden) == (8, 1, (6, 5, 4))
    assert model(torch.rand(1, 3, 10, 10))[-1].shape == (1, 3, 10, 10)
    assert build_model("mspfn-tiny", lstm_steps=3).build_spec == {"name": "mspfn-tiny", "overrides": {"lstm_steps": 3}}
    with pytest.raises(TypeError, match="widht"):
        build_model("mspfn-tiny", widht=3)
    for bad, field in [(dict(channels=0), "channels"), (dict(backend="cuda"), "backend"),
                       (dict(pyramid="laplace"), "pyramid"), (dict(cabs_per_scale=(1, 1)), "cabs_per_scale"),
                       (dict(lstm_kernel=4), "lstm_kernel")]:
        with pytest.raises(ValueError, match=field):
            build_model("mspfn-tiny", **bad)


def test_bad_input_names_x():
    model = _tiny()
    with pytest.raises(ValueError, match="x"):
        model(torch.rand(3, 8, 8))
    with pytest.raises(ValueError, match="x"):
        model(torch.rand(1, 4, 8, 8))
    with pytest.raises(TypeError, match="x"):
        model(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))


# ---------------------------------------------------------------- CLI

def test_train_command_runs(tmp_path):
    """`sdpsfnet train --model mspfn --preset tiny --steps 5 --out DIR` (synthetic rain by default):
    exits 0, logs 5 steps, and checkpoints the small variant (about 10 s on 2 CPU cores)."""
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "sdpsfnet", "train", "--model", "mspfn", "--preset", "tiny",
                           "--steps", "5", "--out", str(out), "--no-progress"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out / "metrics.csv", newline="") as f:
        trained = {int(r["step"]): float(r["loss"]) for r in csv.DictReader(f) if r["loss"]}
    assert sorted(trained) == [1, 2, 3, 4, 5] and all(math.isfinite(v) for v in trained.values()), trained
    ckpt = torch.load(out / "last.pt", map_location="cpu", weights_only=False)
    assert ckpt["config"]["model"] == "mspfn-tiny" and ckpt["step"] == 5
