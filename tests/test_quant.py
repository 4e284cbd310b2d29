import copy

import pytest
import torch

from offbyone.metrics import loss_on
from offbyone.model import GPT, GPTConfig
from offbyone.quant import (ActQuant, QuantConfig, asymmetric_qparams, calibrate_ranges,
                            quantize, quantize_model, quantize_weight, sweep, symmetric_qparams)

V = 23


@pytest.fixture(scope="module")
def trained():
    """A tiny GPT that has memorised a few sequences (so quantization error shows in its loss)."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=V, block_size=16, n_layer=2, n_head=2, n_embd=32,
                          attention="softmax1"))
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, V, (16, 16), generator=g)
    y = torch.roll(x, -1, dims=1)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(200):
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), x, y


def test_rounding_matches_torch_fake_quantize():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4096, generator=g) * 3
    x[:8] = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, 100.0, -100.0, 0.0]) * 0.05  # ties, clamps
    scale, zero, qmin, qmax = asymmetric_qparams(torch.tensor(-2.0), torch.tensor(5.0), 8)
    ours = quantize(x, scale, zero, qmin, qmax)
    theirs = torch.fake_quantize_per_tensor_affine(x, float(scale), int(zero), qmin, qmax)
    assert torch.equal(ours, theirs)
    w = torch.randn(6, 10, generator=g)
    s, z, lo, hi = symmetric_qparams(w.abs().amax(1), 4)
    ours = quantize(w, s[:, None], z[:, None], lo, hi)
    theirs = torch.fake_quantize_per_channel_affine(w, s, z.int(), 0, lo, hi)
    assert torch.equal(ours, theirs)
    assert torch.equal(quantize_weight(w, 4, "channel"), theirs)


@pytest.mark.parametrize("bits", [4, 8])
def test_error_within_half_a_step_inside_the_range(bits):
    lo, hi = torch.tensor(-1.3), torch.tensor(2.9)
    scale, zero, qmin, qmax = asymmetric_qparams(lo, hi, bits)
    x = torch.linspace(-1.3, 2.9, 10_001)
    err = (quantize(x, scale, zero, qmin, qmax) - x).abs()
    assert err.max() <= scale / 2 + 1e-6
    # outside the range the error is the clipping
    assert (quantize(torch.tensor([10.0]), scale, zero, qmin, qmax) - 10.0).abs() > 5
    # the grid holds 0 exactly (zero padding and exact abstention stay exact)
    assert quantize(torch.tensor([0.0]), scale, zero, qmin, qmax).item() == 0.0


def test_weight_ranges_and_mse_option():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 64, generator=g)
    w[0, 0] = 20.0                                       # one outlier weight
    for gran in ("tensor", "channel"):
        mm = quantize_weight(w, 4, gran, "minmax")
        mse = quantize_weight(w, 4, gran, "mse")
        assert (mse - w).pow(2).sum() <= (mm - w).pow(2).sum()
    # per channel confines the outlier's coarse grid to its own row
    per_t = (quantize_weight(w, 4, "tensor") - w)[1:].pow(2).mean()
    per_c = (quantize_weight(w, 4, "channel") - w)[1:].pow(2).mean()
    assert per_c < 0.2 * per_t
    with pytest.raises(ValueError, match="tensor, channel"):
        quantize_weight(w, 8, "group")


def test_activation_ranges_running_minmax_with_momentum():
    q = ActQuant(8)
    q(torch.tensor([-1.0, 1.0]))
    q(torch.tensor([-3.0, 11.0]))
    assert q.lo.item() == pytest.approx(0.9 * -1 + 0.1 * -3)
    assert q.hi.item() == pytest.approx(0.9 * 1 + 0.1 * 11)
    q.calibrating = False
    y = q(torch.tensor([0.5, 5.0]))
    assert y[1].item() <= q.hi.item() + 1e-6             # frozen: clipped to the static range
    with pytest.raises(RuntimeError, match="before calibration"):
        fresh = ActQuant(8)
        fresh.calibrating = False
        fresh(torch.zeros(2))


def test_w16a16_matches_full_precision_and_original_is_untouched(trained):
    model, x, y = trained
    before = copy.deepcopy(model.state_dict())
    fp = loss_on(model, x, y)
    # calibrated on the evaluation batch itself, so no value is clipped: only rounding is left
    q16 = quantize_model(model, QuantConfig(16, 16), calib_batches=[x, x])
    assert loss_on(q16, x, y) == pytest.approx(fp, abs=2e-5)
    q4 = quantize_model(model, QuantConfig(4, 4), calib_batches=[x[:8], x[8:]])
    assert loss_on(q4, x, y) > fp + 0.01                 # and low bits do cost something
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.lm_head.weight is model.wte.weight      # still tied, still fast path
    assert model.blocks[0].attn.impl == "fast"


def test_planted_activation_outlier_breaks_w8a8_per_tensor(trained):
    model, x, y = trained
    clean = sweep(model, [x[:8], x[8:]], x, y, bit_widths=[(8, 8)])[0]
    planted = copy.deepcopy(model)
    C, j = 32, 5
    with torch.no_grad():   # value channel j x 1000, its column in c_proj / 1000: same function,
        attn = planted.blocks[0].attn   # but an outlier channel in the input of c_proj
        attn.c_attn.weight[2 * C + j] *= 1000
        attn.c_attn.bias[2 * C + j] *= 1000
        attn.c_proj.weight[:, j] /= 1000
    assert loss_on(planted, x, y) == pytest.approx(clean["fp_loss"], abs=1e-4)
    bad = sweep(planted, [x[:8], x[8:]], x, y, bit_widths=[(8, 8)])[0]
    assert abs(clean["gap"]) < 0.02
    assert bad["gap"] > 0.2 and bad["gap"] > 10 * abs(clean["gap"])


def test_calibration_does_not_depend_on_bit_width(trained):
    model, x, _ = trained
    r = calibrate_ranges(model, [x])
    q8 = quantize_model(model, QuantConfig(8, 8), calib_batches=[x])
    q4 = quantize_model(model, QuantConfig(4, 4), ranges=r)
    for (n8, m8), (n4, m4) in zip(q8.named_modules(), q4.named_modules()):
        if isinstance(m8, ActQuant):
            assert n8 == n4 and torch.equal(m8.lo, m4.lo) and torch.equal(m8.hi, m4.hi)


def test_bad_quant_config():
    with pytest.raises(ValueError, match="wbits"):
        QuantConfig(wbits=1)
    with pytest.raises(ValueError, match="minmax, percentile"):
        QuantConfig(act_method="entropy")
