"""The rival fixes (clipped softmax, gated attention, output gate, softpick), each against a
float64 reference written from its formula, independently of lib/offbyone/attention.py."""
import math

import pytest
import torch

from offbyone.attention import VARIANTS, attention, clipped_softmax, softpick
from offbyone.metrics import attention_statistics, token_classes
from offbyone.model import GPT, CausalSelfAttention, GPTConfig

F64 = torch.float64


def _qkv(B=2, H=3, T=24, D=8, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(B, H, T, D, generator=g, dtype=F64) * scale).requires_grad_()
            for _ in range(3)]


def _scores(q, k):
    T = q.shape[-2]
    att = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    return att, causal


def _clipped_ref(q, k, v, alpha):
    att, causal = _scores(q, k)
    att = att.masked_fill(~causal, float("-inf"))
    gamma = -alpha / q.shape[-2]
    p = torch.clamp((1 - gamma) * torch.softmax(att, -1) + gamma, 0, 1)
    return p @ v, p


def _softpick_ref(q, k, v, eps=1e-6):
    """Zuhri et al.'s stable form with m the row max over the visible keys, written out."""
    att, causal = _scores(q, k)
    out = torch.zeros_like(att)
    B, H, T, _ = att.shape
    for t in range(T):
        row = att[..., t, : t + 1]                                 # the keys query t sees
        m = row.max(-1, keepdim=True).values
        e = torch.exp(row - m) - torch.exp(-m)
        out[..., t, : t + 1] = torch.relu(e) / (e.abs().sum(-1, keepdim=True) + eps)
    return out @ v, out


def _check(ours, ref, leaves):
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
    g = torch.randn(ours.shape, generator=torch.Generator().manual_seed(9), dtype=F64)
    for a, b in zip(torch.autograd.grad(ours, leaves, g), torch.autograd.grad(ref, leaves, g)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("impl", ["fast", "reference"])
@pytest.mark.parametrize("alpha", [2.0, 4.0])
def test_clipped_softmax_against_its_formula(impl, alpha):
    q, k, v = _qkv(seed=1, scale=2.0)
    _check(attention(q, k, v, "clipped", impl=impl, clip_alpha=alpha),
           _clipped_ref(q, k, v, alpha)[0], [q, k, v])


def test_clipped_softmax_gives_exact_zeros_and_ones():
    x = torch.tensor([[3.0, 0.0, -5.0, float("-inf")], [1.0, float("-inf"), float("-inf"),
                                                        float("-inf")]], dtype=F64)
    p = clipped_softmax(x, gamma=-0.25)
    assert p[0, 2] == 0.0 and p[0, 3] == 0.0        # small weights clipped to exactly 0
    assert p[1, 0] == 1.0                            # a lone key keeps exactly 1
    assert p[0, 0] < 1.0
    # with zeta > 1 a dominant weight is clipped to exactly 1
    assert clipped_softmax(x, gamma=-0.25, zeta=1.5)[0, 0] == 1.0
    q, k, v = _qkv(T=64, seed=2, scale=3.0)
    _, probs = _clipped_ref(q, k, v, 4.0)
    assert (probs == 0).sum() > (torch.ones(64, 64).triu(1) == 1).sum() * 6  # beyond the mask


@pytest.mark.parametrize("impl", ["fast", "reference"])
@pytest.mark.parametrize("scale", [0.5, 3.0])
def test_softpick_against_its_formula(impl, scale):
    q, k, v = _qkv(seed=3, scale=scale)
    _check(attention(q, k, v, "softpick", impl=impl), _softpick_ref(q, k, v)[0], [q, k, v])


def test_softpick_zeros_and_masked_rows():
    x = torch.tensor([[2.0, 0.0, -1.0, float("-inf")], [-3.0, -0.5, float("-inf"), -2.0]],
                     dtype=F64, requires_grad=True)
    p = softpick(x)
    assert p[0, 1] == 0 and p[0, 2] == 0 and p[0, 3] == 0   # non-positive logits: exactly 0
    assert (p[1] == 0).all()                                 # all non-positive: the head abstains
    # masked entries are left out of the denominator: |e^0 - 1| + |e^-1 - 1| only
    assert p[0, 0].item() == pytest.approx((math.e**2 - 1) / (math.e**2 - 1 + 1 - math.exp(-1)), rel=1e-5)
    masked = torch.full((2, 5), float("-inf"), dtype=F64, requires_grad=True)
    y = softpick(masked)
    (g,) = torch.autograd.grad(y.sum(), masked)
    assert (y == 0).all() and torch.isfinite(g).all()
    for big in (1e3, -1e3):
        z = (torch.randn(3, 7, dtype=F64) + big).requires_grad_()
        y = softpick(z)
        (g,) = torch.autograd.grad((y * torch.randn_like(y)).sum(), z)
        assert torch.isfinite(y).all() and torch.isfinite(g).all()


def _cfg(attention, **kw):
    return GPTConfig(vocab_size=11, block_size=16, n_layer=2, n_head=2, n_embd=16,
                     attention=attention, **kw)


def _module(attention, **kw):
    torch.manual_seed(0)
    return CausalSelfAttention(_cfg(attention, **kw)).double()


def _ungated(m, x):
    """softmax attention of the module's own q, k, v, heads merged, before c_proj."""
    B, T, C = x.shape
    H = m.n_head
    q, k, v = m.c_attn(x).split(C, dim=2)
    q, k, v = (t.view(B, T, H, C // H).transpose(1, 2) for t in (q, k, v))
    att, causal = _scores(q, k)
    return torch.softmax(att.masked_fill(~causal, float("-inf")), -1) @ v   # (B, H, T, hs)


@pytest.mark.parametrize("impl", ["fast", "reference"])
def test_gated_attention_against_its_formula(impl):
    m = _module("gated")
    m.impl = impl
    x = torch.randn(2, 16, 16, dtype=F64, requires_grad=True)
    ours = m(x)
    y = _ungated(m, x)
    hs = 8
    gates = [torch.sigmoid(x[..., h * hs:(h + 1) * hs] @ m.gate_weight[h] + m.gate_bias[h])
             for h in range(2)]                                             # (B, T) each
    y = torch.stack([y[:, h] * gates[h].unsqueeze(-1) for h in range(2)], 1)
    ref = m.c_proj(y.transpose(1, 2).reshape(2, 16, 16))
    _check(ours, ref, [x, m.gate_weight, m.gate_bias])


@pytest.mark.parametrize("mode", ["elementwise", "headwise"])
def test_output_gate_against_its_formula(mode):
    m = _module("outgate", outgate_mode=mode)
    x = torch.randn(2, 16, 16, dtype=F64, requires_grad=True)
    y = _ungated(m, x).transpose(1, 2).reshape(2, 16, 16)                   # (B, T, C)
    g = torch.sigmoid(x @ m.gate_proj.weight.T + m.gate_proj.bias)
    g = g if mode == "elementwise" else g.repeat_interleave(8, dim=-1)
    _check(m(x), m.c_proj(y * g), [x, m.gate_proj.weight])


@pytest.mark.parametrize("variant,kw", [("gated", {}), ("softmax1", {"gate": "gated"})])
def test_gate_starts_at_pi_init_with_zero_input_weight(variant, kw):
    m = _module(variant, gate_init=0.3, **kw)
    seen = {}
    m.hook_out.register_forward_hook(lambda mod, i, o: seen.__setitem__("out", o))
    x = torch.randn(2, 16, 16, dtype=F64)
    with torch.no_grad():
        m.gate_weight.zero_()
        m(x)
        gated = seen["out"].clone()
        m.gate = "none"
        m(x)
        plain = seen["out"]
    # the bias logit(0.3) is stored in float32, hence the tolerance
    torch.testing.assert_close(gated, 0.3 * plain, rtol=1e-6, atol=1e-12)


def test_combinations_allowed_and_refused():
    for attn in ("softmax", "softmax1", "sink", "clipped", "softpick"):
        for gate in ("none", "gated", "outgate"):
            assert _cfg(attn, gate=gate).gate_kind() == gate
    assert _cfg("outgate").gate_kind() == "outgate"
    with pytest.raises(ValueError, match="already has its gate.*softmax, softmax1, sink"):
        _cfg("gated", gate="outgate")
    with pytest.raises(ValueError, match="none, gated, outgate"):
        _cfg("softmax1", gate="sigmoid")
    with pytest.raises(ValueError, match="elementwise, headwise"):
        _cfg("outgate", outgate_mode="channel")


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_measurement_handles_every_variant(variant):
    torch.manual_seed(0)
    model = GPT(_cfg(variant)).eval()
    itos = list("abcdefgh ,.")
    seqs = torch.randint(0, 11, (3, 16))
    st = attention_statistics(model, seqs, token_classes(itos, None))
    abst = st["mean_abstention"]
    if variant in ("softmax", "gated", "outgate"):
        assert abs(abst) < 1e-6 and (st["gate"] is None) == (variant == "softmax")
    if variant in ("softmax1", "sink", "softpick"):
        assert abst > 0                                      # these can leave mass unspent
    if variant in ("gated", "outgate"):
        gate = torch.tensor(st["gate"])
        assert gate.shape == (2, 2) and ((gate > 0) & (gate < 1)).all()
        if variant == "gated":                               # starts near pi_init = 0.25
            assert gate.mean().item() == pytest.approx(0.25, abs=0.02)
