"""Property-based tests of the attention code (hypothesis): random shapes, scales, masks and
dtypes. No NaN or inf, and the fast paths agree with the reference within dtype tolerance."""
import math

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from offbyone.attention import (VARIANTS, fast_attention, reference_attention, sink_softmax,
                                softmax, softmax1, softpick)

TOL = {torch.float32: (2e-4, 2e-5), torch.bfloat16: (4e-2, 2e-2), torch.float16: (4e-3, 2e-3),
       torch.float64: (1e-9, 1e-11)}
SETTINGS = settings(max_examples=60, deadline=None, derandomize=True,  # the same cases every run
                    suppress_health_check=[HealthCheck.too_slow])


@st.composite
def attention_inputs(draw):
    B = draw(st.integers(1, 2))
    H = draw(st.integers(1, 3))
    T = draw(st.integers(1, 40))
    D = draw(st.sampled_from([4, 8, 16, 32]))
    scale = draw(st.sampled_from([1e-3, 0.1, 1.0, 5.0, 30.0]))
    dtype = draw(st.sampled_from([torch.float32, torch.bfloat16, torch.float16, torch.float64]))
    variant = draw(st.sampled_from(list(VARIANTS)))
    sink_shift = draw(st.sampled_from([-50.0, 0.0, 50.0]))
    causal = draw(st.booleans())
    seed = draw(st.integers(0, 2**16))
    return B, H, T, D, scale, dtype, variant, sink_shift, causal, seed


@SETTINGS
@given(attention_inputs())
def test_fast_and_reference_agree_and_stay_finite(args):
    B, H, T, D, scale, dtype, variant, sink_shift, causal, seed = args
    g = torch.Generator().manual_seed(seed)
    q64, k64, v64 = (torch.randn(B, H, T, D, generator=g, dtype=torch.float64) for _ in range(3))
    q64, k64 = q64 * math.sqrt(scale), k64 * math.sqrt(scale)
    s64 = (torch.randn(H, generator=g, dtype=torch.float64) + sink_shift
           if VARIANTS[variant].learned_sink else None)
    # the reference in float64 on the same (rounded) inputs
    q, k, v = (t.to(dtype).requires_grad_() for t in (q64, k64, v64))
    s = s64.to(dtype).requires_grad_() if s64 is not None else None
    ref, _ = reference_attention(*(t.detach().double() for t in (q, k, v)), variant,
                                 s.detach().double() if s is not None else None, causal=causal)
    out = fast_attention(q, k, v, variant, s, causal=causal)
    assert out.dtype == dtype and torch.isfinite(out).all()
    rtol, atol = TOL[dtype]
    # errors scale with the values' magnitude (|v| ~ 1) and, for sharp heads, with the logits
    atol = atol * max(1.0, scale)
    torch.testing.assert_close(out.double(), ref, rtol=rtol, atol=atol)
    grads = torch.autograd.grad(out.float().square().sum(), [q, k, v] + ([s] if s is not None else []))
    if not (variant == "softpick" and dtype == torch.float16):
        # softpick's exact derivative at a score of 0 is 1/eps = 1e6, beyond float16's range
        assert all(torch.isfinite(gr).all() for gr in grads)


@SETTINGS
@given(st.integers(1, 30), st.sampled_from([1.0, 1e2, 1e3, 1e6]), st.booleans(),
       st.integers(0, 2**16))
def test_normalisers_finite_and_bounded(n, magnitude, mask_some, seed):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(3, n, generator=g, dtype=torch.float64) * magnitude).requires_grad_()
    xm = x
    if mask_some:
        mask = torch.rand(3, n, generator=g) < 0.5
        mask[0] = True                                   # one fully masked row
        xm = x.masked_fill(mask, float("-inf"))
    for fn in (softmax, softmax1, softpick, lambda t: sink_softmax(t, 3.0)):
        p = fn(xm)
        assert torch.isfinite(p).all() and (p >= 0).all()
        assert (p.sum(-1) <= 1 + 1e-9).all()
        if mask_some:
            assert (p[0] == 0).all()
        (gx,) = torch.autograd.grad((p * torch.randn_like(p)).sum(), x, retain_graph=True)
        assert torch.isfinite(gx).all()
