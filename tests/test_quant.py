import copy

import pytest
import torch

from offbyone.metrics import loss_on
from offbyone.model import GPT, GPTConfig
from offbyone.quant import (SETUPS, ActQuant, QuantConfig, asymmetric_qparams,
                            calibrate_ranges, quantize, quantize_model, quantize_weight,
                            quantizer_names, sweep, symmetric_qparams)

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
    assert torch.equal(quantize_weight(w, 4, "channel", "minmax"), theirs)


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
    with pytest.raises(ValueError, match="mse, minmax"):
        quantize_weight(w, 8, "tensor", "kl")


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
    for bits in (1, 17, 8.0, True):
        with pytest.raises(ValueError, match="wbits must be an integer from 2 to 16"):
            QuantConfig(wbits=bits)
        with pytest.raises(ValueError, match="abits must be an integer from 2 to 16"):
            QuantConfig(abits=bits)
    with pytest.raises(ValueError, match="minmax, percentile"):
        QuantConfig(act_method="entropy")
    with pytest.raises(ValueError, match="'w8a8' is not one of fp32_head, linear_inputs"):
        QuantConfig(setup="w8a8")
    with pytest.raises(ValueError, match="activation bits must be an integer from 2 to 16"):
        ActQuant(32)
    with pytest.raises(ValueError, match="weight bits must be an integer from 2 to 16"):
        quantize_weight(torch.ones(3, 3), 1)


# ---- the anchor's setup: every tensor Bondarenko et al. quantize has its quantizer --------

def _tiny(attention="softmax", **kw):
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=V, block_size=16, n_layer=2, n_head=2, n_embd=32,
                         attention=attention, **kw)).eval()


ANCHOR_PER_BLOCK = ["ln_1", "attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_scores",
                    "attn.hook_probs", "attn.hook_context", "attn.hook_proj", "hook_mid", "ln_2",
                    "mlp.hook_hidden", "mlp.hook_out", "hook_resid"]


@pytest.mark.parametrize("attention", ["softmax", "softmax1", "sink", "clipped", "softpick",
                                       "gated", "outgate"])
def test_fp32_head_quantizes_every_tensor_the_anchor_does(attention):
    model = _tiny(attention)
    names = quantizer_names(model)
    gate = ["attn.hook_out"] if attention in ("gated", "outgate") else []  # after the gate too
    per_block = ANCHOR_PER_BLOCK[:7] + gate + ANCHOR_PER_BLOCK[7:]
    expected = ["hook_embed"] + [f"blocks.{i}.{p}" for p in per_block for i in range(2)] + ["ln_f"]
    assert sorted(names) == sorted(expected)
    # each of them is on the forward path: calibration gives every one a finite range
    x = torch.randint(0, V, (4, 16), generator=torch.Generator().manual_seed(0))
    ranges = calibrate_ranges(model, [x])
    assert sorted(ranges) == sorted(expected)
    assert all(torch.isfinite(lo) and torch.isfinite(hi) and hi > lo for lo, hi in ranges.values())
    # every weight is on a 4-bit grid (at most 15 values); the LM head alone is not
    q = quantize_model(model, QuantConfig(4, 8), ranges=ranges)
    for name, p in q.named_parameters():
        if name == "lm_head.weight":
            assert torch.equal(p, model.lm_head.weight)
            assert p.unique().numel() > 15
        elif p.dim() >= 2 or name.endswith(".sink"):
            assert p.unique().numel() <= 15, name


def test_fp32_head_quantizes_more_than_the_earlier_setup():
    model = _tiny()
    new, old = set(quantizer_names(model)), set(quantizer_names(model, "linear_inputs"))
    assert {"ln_f", "blocks.0.attn.hook_scores", "blocks.1.hook_mid",
            "blocks.0.attn.hook_q"} <= new - old
    assert "ln_f" not in old and set(SETUPS) == {"fp32_head", "linear_inputs"}


@pytest.mark.parametrize("attention", ["softmax", "softmax1", "sink", "clipped", "softpick",
                                       "gated", "outgate"])
def test_16_bits_is_full_precision_for_every_variant(trained, attention):
    _, x, y = trained
    model = _tiny(attention)
    fp = loss_on(model, x, y)
    for setup in SETUPS:
        q16 = quantize_model(model, QuantConfig(16, 16, setup=setup), calib_batches=[x[:8], x[8:]])
        assert abs(loss_on(q16, x, y) - fp) < 1e-3


def test_every_quantizer_grid_is_torchs_fake_quantize(trained):
    model, x, _ = trained
    g = torch.Generator().manual_seed(3)
    for bits in (4, 8, 16):
        q = quantize_model(model, QuantConfig(8, bits), calib_batches=[x[:8], x[8:]])
        quantizers = [m for m in q.modules() if isinstance(m, ActQuant)]
        assert len(quantizers) == len(quantizer_names(model))
        for m in quantizers:
            scale, zero, qmin, qmax = m.qparams()
            t = m.lo + (m.hi - m.lo) * (torch.rand(2048, generator=g) * 1.4 - 0.2)  # and clips
            theirs = torch.fake_quantize_per_tensor_affine(t, float(scale), int(zero), qmin, qmax)
            ours = m(t)
            # the same grid; torch's kernel rounds x / s + z in one fused multiply-add, so at 16
            # bits (values up to 65535, float32 steps of 1/256) a value within float error of a
            # half step may land on the neighbouring grid point: exactly one step away
            v = t.double() / scale.double() + zero.double()
            tie = ((v - v.floor()) - 0.5).abs() < 0.01
            differ = ours != theirs
            assert not (differ & ~tie).any()
            assert torch.allclose((ours - theirs)[differ].abs() / scale, torch.tensor(1.0), atol=0.02)
            # ties are rare at 8 bits (the trained ranges decide where they fall) and common at 16
            assert differ.sum() <= (2 if bits <= 8 else 10)


def test_quantizer_before_calibration_says_how_to_calibrate(trained):
    model, x, _ = trained
    q = ActQuant(8)
    q.calibrating = False
    with pytest.raises(RuntimeError, match="calib_batches"):
        q(torch.zeros(3))
    with pytest.raises(ValueError, match="calib_batches or ranges"):
        quantize_model(model, QuantConfig())
    with pytest.raises(ValueError, match="calibrate with setup='fp32_head'"):
        quantize_model(model, QuantConfig(), ranges=calibrate_ranges(model, [x], setup="linear_inputs"))


# --- which quantized tensor costs what (quant.group_gaps) -------------------------------------
@pytest.mark.parametrize("attention,gate", [("softmax1", "none"), ("softmax", "gated")])
def test_groups_cover_every_quantizer_exactly_once(attention, gate):
    from offbyone.quant import GROUPS, POINTS, quantizer_groups
    model = GPT(GPTConfig(vocab_size=V, block_size=16, n_layer=2, n_head=2, n_embd=32,
                          attention=attention, gate=gate))
    for setup in SETUPS:
        groups = quantizer_groups(model, setup)
        flat = [n for names in groups.values() for n in names]
        assert sorted(flat) == sorted(quantizer_names(model, setup))
        assert len(flat) == len(set(flat))
    # every quantization point has one group
    points = [p for ps in GROUPS.values() for p in ps]
    assert sorted(points) == sorted(POINTS) and len(points) == len(set(points))


def test_group_gaps_all_is_the_setting_and_none_is_the_weights(trained):
    from offbyone.quant import group_cases, group_gaps, quantizer_groups
    model, x, y = trained
    calib = [x[:8], x[8:]]
    rows = group_gaps(model, calib, x, y, settings=((8, 8), (16, 4)))
    assert len(rows) == group_cases(model, ((8, 8), (16, 4)))
    by = {(r["setting"], r["mode"], r["group"]): r["gap"] for r in rows}
    full = {r["config"]: r["gap"] for r in sweep(model, calib, x, y, ((8, 8), (16, 4)))}
    assert by[("W8A8", "all", "")] == pytest.approx(full["W8A8"], abs=1e-6)
    assert by[("W16A4", "all", "")] == pytest.approx(full["W16A4"], abs=1e-6)
    assert abs(by[("W16A4", "none", "")]) < 1e-4           # 16-bit weights: no error of their own
    # 4-bit activations cost something, and some group carries most of it
    groups = quantizer_groups(model)
    only = {g: by[("W16A4", "only", g)] for g in groups}
    assert by[("W16A4", "all", "")] > 0.05 and max(only.values()) > 0.01
    # 'all but' the one group that costs most leaves less than everything
    worst = max(only, key=only.get)
    assert by[("W16A4", "all but", worst)] < by[("W16A4", "all", "")]


def test_a_quantizer_switched_off_passes_its_input_through():
    m = ActQuant(4)
    m(torch.linspace(-1, 1, 100))
    m.calibrating = False
    x = torch.linspace(-1, 1, 7) * 0.37
    assert not torch.equal(m(x), x)
    m.enabled = False
    assert torch.equal(m(x), x)


def test_the_gap_after_a_class_is_the_masked_loss_of_the_same_models(trained):
    """sweep's gap at the positions after a trigger (query_mask over ids) equals loss_by_class
    on the quantized and the full-precision model, computed separately; the all-position gap
    is the same number with and without the mask."""
    from offbyone.metrics import loss_by_class, losses_on
    model, x, y = trained
    mask = torch.zeros(V, dtype=torch.bool)
    mask[[3, 7, 11]] = True                       # a few token ids play the trigger
    calib = [x[:8], x[8:]]
    plain = sweep(model, calib, x, y, [(8, 8), (16, 4)])
    masked = sweep(model, calib, x, y, [(8, 8), (16, 4)], query_mask=mask)
    assert [r["loss"] for r in plain] == [r["loss"] for r in masked]
    assert "gap_class" not in plain[0]
    ranges = calibrate_ranges(model, calib, "minmax", "fp32_head")
    fp = loss_by_class(model, x, y, mask)["in_class"]
    for row, (wb, ab) in zip(masked, [(8, 8), (16, 4)]):
        q = quantize_model(model, QuantConfig(wbits=wb, abits=ab), ranges=ranges)
        assert row["loss_class"] == pytest.approx(loss_by_class(q, x, y, mask)["in_class"], rel=1e-6)
        assert row["gap_class"] == pytest.approx(row["loss_class"] - fp, abs=1e-6)
    assert abs(masked[1]["gap_class"]) > 0        # 4-bit activations cost something there
    # losses_on's mean is loss_on's, bit for bit; no position in the class gives None
    assert losses_on(model, x, y, None) == (loss_on(model, x, y), None)
    assert losses_on(model, x, y, torch.zeros(V, dtype=torch.bool))[1] is None
