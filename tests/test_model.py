"""SD-PSFNet model: shapes, presets, parameter counts, ablations, backend parity, training, compile.

Everything runs at the ``tiny`` widths on small images (the CPU here is shared and slow); only
the parameter-count test builds the full-width models (construction only, no forward).
"""

import pytest
import torch
import torch.nn.functional as F

import psfops
from sdpsfnet import build_model
from psfops.nn import DynamicPSF, GatedFusion
from sdpsfnet.models.sdpsfnet import ABLATIONS, TINY_WIDTHS, PSFAttention, SDPSFNetConfig

from helpers import FWD_RTOL, GRAD_RTOL, assert_rel_close, l1_training_losses


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def tiny(**overrides):
    torch.manual_seed(0)
    return build_model("tiny", **overrides)


@pytest.mark.parametrize("shape", [(1, 3, 24, 20), (2, 3, 23, 21), (3, 3, 9, 13), (1, 3, 2, 3)])
def test_output_shapes_any_size(shape):
    model = tiny()
    x = torch.rand(*shape)
    out = model(x)
    assert isinstance(out, list) and len(out) == model.config.num_mid_stages + 2 == 3
    for o in out:
        assert o.shape == x.shape and o.dtype == x.dtype and torch.isfinite(o).all()


def test_batch_items_are_independent():
    """Padding/cropping and every layer act per image: a batch gives each item's own result."""
    model = tiny().eval()
    x = torch.rand(2, 3, 13, 11)
    batched = model(x)[-1]
    for i in range(2):
        torch.testing.assert_close(batched[i:i + 1], model(x[i:i + 1])[-1], rtol=1e-5, atol=1e-5)


def test_psf_maps_and_modules():
    model = tiny()
    cfg = model.config
    images, maps = model(torch.rand(2, 3, 23, 21), return_psf=True)
    assert len(images) == 3 and len(maps) == cfg.num_mid_stages + 1
    for p in maps:  # padded to 24x24, the head runs at 1/4 scale
        assert p.shape == (2, cfg.num_basis, 6, 6)
        torch.testing.assert_close(p.sum(dim=(2, 3)), torch.ones(2, cfg.num_basis), rtol=0, atol=1e-5)
    mods = model.psf_modules()
    assert len(mods) == 3 * (cfg.num_mid_stages + 1)
    assert all(isinstance(m, psfops.nn.DynamicPSF) for m in mods)
    k = mods[0].kernels()
    assert k.shape == (cfg.num_basis, cfg.psf_kernel_size, cfg.psf_kernel_size)
    torch.testing.assert_close(k.sum(dim=(1, 2)), torch.ones(cfg.num_basis), rtol=0, atol=1e-5)
    assert tiny(num_basis=0).psf_modules() == [] and tiny(num_basis=0)(torch.rand(1, 3, 8, 8), return_psf=True)[1] == []


def _psf_attention_truth(att: PSFAttention, x, psf):
    """Float64 PSF-aware attention written out: pooled code -> per-channel gamma, beta; spatial
    weights from [mean_c, max_c, single-channel PSF bilinearly upsampled]."""
    x, psf = x.double(), psf.double()
    conv0, prelu = att.encoder[0], att.encoder[1]
    dense = psf * psf.shape[-2] * psf.shape[-1]
    h = F.conv2d(dense, conv0.weight.double(), conv0.bias.double(), padding=1)
    code = F.prelu(h, prelu.weight.double()).mean(dim=(2, 3))                    # (B, C)
    gb = code @ att.modulation.weight.double()[:, :, 0, 0].T + att.modulation.bias.double()
    C = x.shape[1]
    gamma, beta = gb[:, :C, None, None], gb[:, C:, None, None]
    x_mod = x * (1 + gamma) + beta
    single = F.interpolate(dense.mean(1, keepdim=True), size=x.shape[-2:], mode="bilinear", align_corners=False)
    stats = torch.cat([x_mod.mean(1, keepdim=True), x_mod.amax(1, keepdim=True), single], 1)
    sp = att.spatial
    return x_mod * torch.sigmoid(F.conv2d(stats, sp.weight.double(), sp.bias.double(), padding=3))


def test_psf_attention_modulates_channels_from_a_pooled_psf_code():
    """The paper's channel modulation: gamma, beta are per channel (B,C,1,1), from a pooled PSF
    code; the spatial attention uses the single-channel PSF at the feature resolution."""
    torch.manual_seed(4)
    att = PSFAttention(channels=6, num_basis=5)
    with torch.no_grad():  # the zero-initialised modulation would hide gamma and beta
        att.modulation.weight.normal_(0, 0.5), att.modulation.bias.normal_(0, 0.5)
    x, psf = torch.randn(2, 6, 12, 10), torch.softmax(torch.randn(2, 5, 30), -1).view(2, 5, 6, 5)
    shapes = []
    att.modulation.register_forward_hook(lambda m, i, o: shapes.append(o.shape))
    y = att(x, psf)
    assert y.shape == x.shape and shapes == [(2, 12, 1, 1)]
    assert_rel_close(y, _psf_attention_truth(att, x, psf), FWD_RTOL[torch.float32], "PSFAttention")


def test_fresh_model_starts_without_modulation():
    """A fresh PSFAttention's channel modulation is the identity (gamma = beta = 0)."""
    att = PSFAttention(channels=4, num_basis=3)
    x, psf = torch.randn(1, 4, 8, 8), torch.softmax(torch.randn(1, 3, 16), -1).view(1, 3, 4, 4)
    with torch.no_grad():
        att.spatial.weight.zero_(), att.spatial.bias.zero_()  # spatial weights sigmoid(0) = 1/2
    torch.testing.assert_close(att(x, psf), x / 2)


def test_fresh_psf_maps_differ_so_the_dictionary_can_diversify():
    """The gradient reaching basis kernel j is its map's weighting of a common per-pixel gradient.
    At init the K_c maps must vary over the image and between each other (the head's features
    are normalized before its random last conv), else every kernel gets the same update."""
    model = tiny()
    torch.manual_seed(5)
    x = torch.rand(2, 3, 32, 32)
    out, maps = model(x, return_psf=True)
    for p in maps:
        dense = p * p.shape[-2] * p.shape[-1]
        assert dense.flatten(2).std(-1).mean() > 0.1 and dense.std(1).mean() > 0.1
    sum(o.square().mean() for o in out).backward()
    for m in model.psf_modules():
        g = m.basis.grad.flatten(1)
        cos = F.normalize(g, dim=1) @ F.normalize(g, dim=1).T
        assert cos.min() < 0.999, "every basis kernel receives the same gradient"


def test_dynamic_psf_matches_depthwise_conv_truth():
    """DynamicPSF(x, w) == sum_j w_j * depthwise_conv(x, k_j), computed in float64 with conv2d."""
    torch.manual_seed(1)
    m = DynamicPSF(channels=3, num_basis=4, kernel_size=5, dilation=2, predict_weights=False)
    with torch.no_grad():
        m.basis.normal_()
    x, w = torch.randn(2, 3, 11, 9), torch.randn(2, 4, 11, 9)
    k = m.kernels().detach().double()
    stack = F.conv2d(x.double().reshape(6, 1, 11, 9), k.unsqueeze(1), dilation=2, padding=4)
    truth = torch.einsum("bcjhw,bjhw->bchw", stack.view(2, 3, 4, 11, 9), w.double())
    assert_rel_close(m(x, w), truth, FWD_RTOL[torch.float32], "DynamicPSF")


def test_parameter_counts_match_paper():
    """Paper: 9.63M at tau=3, 3.64M at tau=0; ours within 1% (the README's counts, exactly)."""
    full, tau0 = n_params(build_model("sdpsfnet")), n_params(build_model("sdpsfnet-tau0"))
    assert (full, tau0) == (9_696_624, 3_675_360)
    assert abs(full / 9.63e6 - 1) < 0.01 and abs(tau0 / 3.64e6 - 1) < 0.01
    tau1, tau2 = n_params(build_model("sdpsfnet-tau1")), n_params(build_model("sdpsfnet-tau2"))
    assert tau0 < tau1 < tau2 < full


def _expected_gates(cfg):
    """GatedFusion count implied by the switches: G1 per later stage, G2 3 per mid stage, G3 2 per
    scale per later stage (ORStage included)."""
    later = cfg.num_mid_stages + 1
    return later * (cfg.gates + 6 * cfg.enhanced_csff) + 3 * cfg.num_mid_stages * cfg.hierarchical_update


@pytest.mark.parametrize("row", sorted(ABLATIONS))
def test_ablation_rows_build_and_train(row):
    torch.manual_seed(0)
    model = build_model("sdpsfnet", **{**TINY_WIDTHS, **ABLATIONS[row]})
    cfg = model.config
    assert sum(isinstance(m, GatedFusion) for m in model.modules()) == _expected_gates(cfg)
    assert len(model.psf_modules()) == (3 * (cfg.num_mid_stages + 1) if cfg.num_basis else 0)
    x = torch.rand(2, 3, 9, 7)
    out = model(x)
    assert len(out) == cfg.num_mid_stages + 2 and all(o.shape == x.shape for o in out)
    sum(o.square().mean() for o in out).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"parameters without gradient: {missing}"


def test_ablation_rows_differ_as_the_paper_says():
    full = SDPSFNetConfig()
    assert SDPSFNetConfig(**ABLATIONS["+psf-40ch"]) == full == SDPSFNetConfig(**ABLATIONS["tau3"])
    base = SDPSFNetConfig(**ABLATIONS["baseline"])
    assert (base.gates, base.hierarchical_update, base.enhanced_csff, base.num_basis) == (False, False, False, 0)
    assert SDPSFNetConfig(**ABLATIONS["+psf-1ch"]).num_basis == 1
    rows = ["baseline", "+gate", "+hierarchical", "+enhanced-csff", "+psf-1ch", "+psf-40ch"]
    changed = []
    for a, b in zip(rows, rows[1:]):  # cumulative: each row changes exactly one thing
        ca, cb = SDPSFNetConfig(**ABLATIONS[a]), SDPSFNetConfig(**ABLATIONS[b])
        changed.append([f for f in ca.__dataclass_fields__ if getattr(ca, f) != getattr(cb, f)])
    assert changed == [["gates"], ["hierarchical_update"], ["enhanced_csff"], ["num_basis"], ["num_basis"]]
    assert [SDPSFNetConfig(**ABLATIONS[f"tau{t}"]).num_mid_stages for t in range(4)] == [0, 1, 2, 3]


@pytest.mark.parametrize("field,value,exc", [
    ("num_mid_stages", 4, ValueError), ("num_mid_stages", -1, ValueError), ("num_mid_stages", 1.0, TypeError),
    ("num_basis", -1, ValueError), ("gates", 1, TypeError), ("n_feat", 0, ValueError),
    ("psf_kernel_size", 6, ValueError), ("backend", "cuda", ValueError), ("widths", 3, TypeError),
])
def test_bad_config_raises_naming_the_field(field, value, exc):
    with pytest.raises(exc, match=field):
        build_model("tiny", **{field: value})


def test_bad_input_raises():
    model = tiny()
    with pytest.raises(ValueError, match="x"):
        model(torch.rand(1, 1, 8, 8))
    with pytest.raises(ValueError, match="x"):
        model(torch.rand(3, 8, 8))
    with pytest.raises(TypeError, match="x"):
        model(torch.randint(0, 255, (1, 3, 8, 8)))


def test_build_spec_rebuilds_the_same_model():
    model = tiny(num_basis=4, enhanced_csff=False)
    again = build_model(model.build_spec["name"], **model.build_spec["overrides"])
    again.load_state_dict(model.state_dict())
    assert again.config == model.config
    x = torch.rand(1, 3, 12, 12)
    torch.testing.assert_close(again(x)[-1], model(x)[-1], rtol=0, atol=0)


def test_triton_and_reference_backends_agree():
    """Same weights, same input: outputs and every parameter gradient agree (float32, rtol 1e-4).
    On CPU the Triton kernels run in the interpreter."""
    pytest.importorskip("triton")
    results = {}
    for name in ("reference", "triton"):
        model = tiny(backend=name)
        torch.manual_seed(2)
        x = torch.rand(1, 3, 12, 12)
        out = model(x)
        cot = [torch.randn_like(o) for o in out]
        torch.autograd.backward(out, cot)
        results[name] = (out, {n: p.grad for n, p in model.named_parameters()})
    (out_r, g_r), (out_t, g_t) = results["reference"], results["triton"]
    for i, (a, b) in enumerate(zip(out_t, out_r)):
        assert_rel_close(a, b, FWD_RTOL[torch.float32], f"output {i}")
    psf_grads = 0
    for n in g_r:
        assert_rel_close(g_t[n], g_r[n], GRAD_RTOL[torch.float32], f"grad {n}")
        psf_grads += "dynamic_psf" in n
    assert psf_grads > 0


def test_backend_config_is_applied(monkeypatch):
    seen = []
    real = psfops.nn.psf_conv
    monkeypatch.setattr(psfops.nn, "psf_conv", lambda *a, **k: seen.append(psfops.current_backend()) or real(*a, **k))
    tiny(backend="reference")(torch.rand(1, 3, 8, 8))
    assert seen and set(seen) == {"reference"}


def test_adamw_steps_reduce_l1_loss():
    model = tiny()
    torch.manual_seed(3)
    x = torch.rand(1, 3, 16, 16)
    target = (x * 0.7 + 0.1).clamp(0, 1)  # a fixed, learnable mapping
    losses = l1_training_losses(model, x, target, steps=6, lr=3e-3)
    assert losses[-1] < 0.8 * losses[0] and losses == sorted(losses, reverse=True), losses


def test_autocast_bf16_forward_backward():
    model = tiny()
    x = torch.rand(1, 3, 12, 12)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    sum(o.float().mean() for o in out).backward()
    assert all(torch.isfinite(o).all() for o in out)


def test_dynamo_traces_tiny_in_one_graph():
    """torch.compile(fullgraph=True) traces the whole forward (no graph breaks); eager backend."""
    model = tiny().eval()
    x = torch.rand(1, 3, 12, 12)
    with torch.no_grad():
        got, want = torch.compile(model, backend="eager", fullgraph=True)(x), model(x)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.slow  # inductor codegen on this CPU takes minutes
def test_torch_compile_tiny():
    model = tiny().eval()
    x = torch.rand(1, 3, 16, 16)
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        got, want = compiled(x), model(x)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_complexity_counts_match_the_readme():
    """The model-zoo figures in the README come from sdpsfnet.models.complexity."""
    from sdpsfnet.models.complexity import count
    params, macs = count("sdpsfnet-tau0", 256)
    assert params == 3_675_360 and round(macs / 1e9, 2) == 140.89
