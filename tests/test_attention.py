"""The attention math: every fast path against its float64 reference, values and gradients."""
import importlib
import math

import pytest
import torch

from offbyone.attention import (FUSED_KERNELS, VARIANTS, _sink_sdpa_appended, sink_fused,
                                attention, fast_attention, fused_kernel_for, get_variant,
                                reference_attention, sink_softmax, softmax, softmax1)

F64 = torch.float64


def _inputs(B, H, T, D, dtype=F64, seed=0, scale=1.0, sink=True):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, T, D, generator=g, dtype=dtype) * s for s in (scale, scale, 1.0))
    s = torch.randn(H, generator=g, dtype=dtype) if sink else None
    return [t.requires_grad_() for t in (q, k, v)], (s.requires_grad_() if sink else None)


def _sink_for(variant, s):
    return s if get_variant(variant).learned_sink else None


def _grads(out, leaves, seed=1):
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=F64)
    return torch.autograd.grad(out, leaves, g.to(out.device, out.dtype))


# --------------------------------------------------------------------------------------------
# softmax1 itself

def check_softmax1(fn):
    """What any softmax1 must satisfy; used on ours and on the classic wrong one."""
    x = torch.tensor([[5.0, 5.0, -1.0], [0.0, 0.0, 0.0], [10.0, -3.0, 2.0]], dtype=F64)
    expected = torch.exp(x) / (1.0 + torch.exp(x).sum(-1, keepdim=True))
    torch.testing.assert_close(fn(x), expected, rtol=1e-12, atol=1e-12)
    # a dominant logit takes (almost) all the weight: 1 / (1 + e^-20 + ...) ~ 1, not 0.5
    big = torch.tensor([[20.0, 0.0]], dtype=F64)
    assert fn(big)[0, 0] > 0.999


def buggy_softmax1(x, dim=-1):
    """The common mistake: subtract the row max, then add a plain 1 to the denominator."""
    e = torch.exp(x - x.amax(dim, keepdim=True))
    return e / (1.0 + e.sum(dim, keepdim=True))


def test_softmax1_known_values():
    check_softmax1(softmax1)


def test_the_classic_wrong_softmax1_is_caught():
    with pytest.raises(AssertionError):
        check_softmax1(buggy_softmax1)
    # and the reason: the wrong one caps every weight at 0.5
    x = torch.randn(100, 7, dtype=F64) * 10
    assert buggy_softmax1(x).max() <= 0.5
    assert softmax1(x).max() > 0.9


def test_softmax1_is_softmax_with_an_appended_zero_logit():
    x = torch.randn(4, 5, 9, dtype=F64) * 3
    appended = torch.softmax(torch.cat([x, torch.zeros(4, 5, 1, dtype=F64)], -1), -1)[..., :-1]
    torch.testing.assert_close(softmax1(x), appended, rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(softmax1(x), sink_softmax(x, 0.0), rtol=0, atol=0)
    # and softmax times sigmoid(logsumexp), the identity the fast path uses
    lse = torch.logsumexp(x, -1, keepdim=True)
    torch.testing.assert_close(softmax1(x), torch.softmax(x, -1) * torch.sigmoid(lse),
                               rtol=1e-13, atol=1e-15)


def test_softmax1_extreme_shifts():
    x = torch.randn(3, 11, dtype=F64)
    # +1e3: the implicit 0 logit is negligible, softmax1 == softmax
    torch.testing.assert_close(softmax1(x + 1e3), torch.softmax(x, -1), rtol=1e-12, atol=1e-14)
    # -1e3: every weight goes to 0 (the head abstains)
    assert softmax1(x - 1e3).abs().max() < 1e-300
    for shift in (1e3, -1e3, 1e30, -1e30):
        xs = (x + shift).requires_grad_()
        y = softmax1(xs)
        (gx,) = torch.autograd.grad((y * torch.randn_like(y)).sum(), xs)
        assert torch.isfinite(y).all() and torch.isfinite(gx).all()


def test_fully_masked_rows_give_zeros_and_finite_gradients():
    x = torch.randn(2, 4, 6, dtype=F64)
    x[0, 1] = float("-inf")
    x[1, :, 3:] = float("-inf")
    for fn in (softmax1, softmax, lambda t: sink_softmax(t, torch.tensor(2.0, dtype=F64))):
        xs = x.clone().requires_grad_()
        y = fn(xs)
        assert torch.equal(y[0, 1], torch.zeros(6, dtype=F64))
        assert (y[1, :, 3:] == 0).all()
        (gx,) = torch.autograd.grad((y * torch.randn_like(y)).sum(), xs)
        assert torch.isfinite(y).all() and torch.isfinite(gx).all()


# --------------------------------------------------------------------------------------------
# Attention: fast path against the materialising reference

@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("T,D", [(1, 8), (2, 16), (17, 8), (64, 32), (128, 64), (512, 16)])
def test_fast_matches_reference_float64(variant, T, D):
    (q, k, v), s = _inputs(2, 3, T, D, seed=T + D)
    sink = _sink_for(variant, s)
    leaves = [q, k, v] + ([sink] if sink is not None else [])
    fast = fast_attention(q, k, v, variant, sink)
    ref, probs = reference_attention(q, k, v, variant, sink)
    torch.testing.assert_close(fast, ref, rtol=1e-10, atol=1e-12)
    for gf, gr in zip(_grads(fast, leaves), _grads(ref, leaves)):
        torch.testing.assert_close(gf, gr, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("variant", ["softmax1", "sink"])
def test_fast_non_causal_and_appended_key_path_match_reference(variant):
    (q, k, v), s = _inputs(2, 2, 33, 16, seed=3)
    sink = _sink_for(variant, s)
    s_eff = sink if sink is not None else torch.zeros(2, dtype=F64)
    leaves = [q, k, v] + ([sink] if sink is not None else [])
    ref, _ = reference_attention(q, k, v, variant, sink, causal=False)
    fast = fast_attention(q, k, v, variant, sink, causal=False)
    torch.testing.assert_close(fast, ref, rtol=1e-10, atol=1e-12)
    for causal in (True, False):
        ref, _ = reference_attention(q, k, v, variant, sink, causal=causal)
        app = _sink_sdpa_appended(q, k, v, s_eff, causal, 1 / math.sqrt(16))
        torch.testing.assert_close(app, ref, rtol=1e-10, atol=1e-12)
        for ga, gr in zip(_grads(app, leaves), _grads(ref, leaves)):
            torch.testing.assert_close(ga, gr, rtol=1e-9, atol=1e-11)


def test_fused_kernel_choice():
    (q, k, v), _ = _inputs(1, 2, 8, 16, sink=False)
    assert fused_kernel_for(q, k, v) == "cpu_flash"
    assert fused_kernel_for(q.float(), k.float(), v.float()) == "cpu_flash"
    meta = torch.empty(1, 2, 8, 16, device="meta")
    assert fused_kernel_for(meta, meta, meta) is None  # no kernel: the appended-key path
    with pytest.raises(ValueError, match="cpu_flash, cuda_flash, cuda_efficient, cuda_cudnn"):
        sink_fused(q, k, v, torch.zeros(2, dtype=F64), True, 0.25, "cuda_flashy")


@pytest.mark.parametrize("kernel,dtype", [("cuda_flash", torch.bfloat16),
                                          ("cuda_efficient", torch.float32),
                                          ("cuda_cudnn", torch.bfloat16)])
def test_cuda_kernel_calls_on_meta_tensors(kernel, dtype):
    """The CUDA kernels' calls (argument order, the efficient kernel's lse padded to a multiple
    of 32 along T) run through PyTorch's shape functions on meta tensors. Their values are the
    CPU kernel's math (tested above in float64) and are checked on a GPU by the test below."""
    B, H, T, D = 2, 3, 40, 64
    q, k, v = (torch.empty(B, H, T, D, device="meta", dtype=dtype, requires_grad=True)
               for _ in range(3))
    s = torch.empty(H, device="meta", dtype=torch.float32, requires_grad=True)
    out = sink_fused(q, k, v, s, True, 0.125, kernel)
    assert out.shape == (B, H, T, D) and out.dtype == dtype
    dq, dk, dv, ds = torch.autograd.grad(out, (q, k, v, s), torch.empty_like(out))
    assert dq.shape == dk.shape == dv.shape == (B, H, T, D) and dq.dtype == dtype
    assert ds.shape == (H,) and ds.dtype == torch.float32
    assert set(FUSED_KERNELS) == {"cpu_flash", "cuda_flash", "cuda_efficient", "cuda_cudnn"}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("variant", ["softmax1", "sink"])
def test_cuda_fused_against_float64_reference(variant, dtype):
    (q, k, v), s = _inputs(2, 4, 200, 64, seed=11)
    sink = _sink_for(variant, s)
    ref, _ = reference_attention(q, k, v, variant, sink)
    dev = [t.detach().to("cuda", dtype).requires_grad_() for t in (q, k, v)]
    sd = sink.detach().to("cuda", torch.float32).requires_grad_() if sink is not None else None
    assert fused_kernel_for(*dev) in ("cuda_flash", "cuda_efficient")
    fast = fast_attention(*dev, variant, sd)
    rtol, atol = (1e-3, 1e-4) if dtype == torch.float32 else (5e-2, 2e-2)
    torch.testing.assert_close(fast.double().cpu(), ref, rtol=rtol, atol=atol)
    leaves = [q, k, v] + ([sink] if sink is not None else [])
    leaves_dev = dev + ([sd] if sd is not None else [])
    for gd, gr in zip(_grads(fast, leaves_dev), _grads(ref, leaves)):
        torch.testing.assert_close(gd.double().cpu(), gr, rtol=10 * rtol, atol=10 * atol)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_fast_float32_against_float64_reference(variant):
    (q, k, v), s = _inputs(2, 4, 256, 32, seed=5)
    sink = _sink_for(variant, s)
    ref, _ = reference_attention(q, k, v, variant, sink)
    q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
    s32 = sink.detach().float().requires_grad_() if sink is not None else None
    fast = fast_attention(q32, k32, v32, variant, s32)
    # stated tolerance: float32 fused kernel vs float64 reference
    torch.testing.assert_close(fast.double(), ref, rtol=1e-4, atol=1e-5)
    leaves64 = [q, k, v] + ([sink] if sink is not None else [])
    leaves32 = [q32, k32, v32] + ([s32] if s32 is not None else [])
    for g32, g64 in zip(_grads(fast, leaves32), _grads(ref, leaves64)):
        torch.testing.assert_close(g32.double(), g64, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("scale", [30.0, 1e-3])
def test_extreme_scores_stay_finite(variant, scale):
    (q, k, v), s = _inputs(1, 2, 40, 16, seed=7, scale=scale)
    sink = _sink_for(variant, s)
    if sink is not None:
        sink = (sink.detach() * 50).requires_grad_()
    leaves = [q, k, v] + ([sink] if sink is not None else [])
    fast = fast_attention(q, k, v, variant, sink)
    ref, _ = reference_attention(q, k, v, variant, sink)
    assert torch.isfinite(fast).all()
    torch.testing.assert_close(fast, ref, rtol=1e-8, atol=1e-10)
    for gf, gr in zip(_grads(fast, leaves), _grads(ref, leaves)):
        assert torch.isfinite(gf).all()
        torch.testing.assert_close(gf, gr, rtol=1e-6, atol=1e-8)


def test_softmax1_is_sink_with_zero_logit_and_abstains():
    (q, k, v), _ = _inputs(2, 3, 50, 16, seed=9, sink=False)
    zero = torch.zeros(3, dtype=F64)
    for impl in ("fast", "reference"):
        a = attention(q, k, v, "softmax1", impl=impl)
        b = attention(q, k, v, "sink", sink=zero, impl=impl)
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-14)
    _, probs = reference_attention(q, k, v, "softmax1")
    assert (probs.sum(-1) < 1).all()          # every query keeps some mass on the sink
    _, probs = reference_attention(q, k, v, "softmax")
    torch.testing.assert_close(probs.sum(-1), torch.ones_like(probs.sum(-1)))


def test_bad_names_are_refused_with_the_choices():
    (q, k, v), s = _inputs(1, 2, 4, 8, sink=True)
    with pytest.raises(ValueError, match="softmax, softmax1, sink"):
        attention(q, k, v, "softmax2")
    with pytest.raises(ValueError, match="fast, reference"):
        attention(q, k, v, "softmax", impl="flash")
    with pytest.raises(ValueError, match="needs a sink logit"):
        attention(q, k, v, "sink")
    with pytest.raises(ValueError, match="fixes its sink logit at 0"):
        attention(q, k, v, "softmax1", sink=s)


@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_custom_ops_pass_torch_opcheck(dtype):
    """The sink fast path's custom ops: schema, fake (meta) implementations, autograd
    registration, checked by torch.library.opcheck on the CPU kernel."""
    (q, k, v), s = _inputs(2, 3, 9, 8, dtype=dtype, seed=4)
    for causal in (True, False):
        torch.library.opcheck(torch.ops.offbyone.sink_attention.default,
                              (q, k, v, s, causal, 0.3, "cpu_flash"))
    out1, lse1, seed, offset = torch.ops.offbyone.sink_attention(q, k, v, s, True, 0.3, "cpu_flash")
    grad = torch.randn_like(out1)
    torch.library.opcheck(torch.ops.offbyone.sink_attention_backward.default,
                          (grad, q.detach(), k.detach(), v.detach(), out1.detach(), lse1, seed,
                           offset, True, 0.3, "cpu_flash"))


# --------------------------------------------------------------------------------------------
# The two registrations of the fused sink path, softmax1 without a sink tensor, the cached
# kernel choice

@pytest.mark.parametrize("learned", [True, False])
def test_eager_function_and_compiled_custom_op_agree(learned):
    """Eager code runs the autograd.Function, traced code the custom op: the same values and
    gradients (float64, CPU kernel), with a learned sink and with softmax1's fixed 0 (None)."""
    (q, k, v), s = _inputs(2, 3, 19, 8, seed=12)
    s = s if learned else None
    leaves = [q, k, v] + ([s] if learned else [])
    eager = sink_fused(q, k, v, s, True, 0.3, "cpu_flash")
    op = torch.ops.offbyone.sink_attention(q, k, v, s, True, 0.3, "cpu_flash")[0]
    torch.testing.assert_close(eager, op, rtol=0, atol=0)
    eager_grads = _grads(eager, leaves)
    for ge, go in zip(eager_grads, _grads(op, leaves)):
        torch.testing.assert_close(ge, go, rtol=1e-14, atol=1e-15)
    s_ref = s if learned else torch.zeros(3, dtype=F64)
    ref, _ = reference_attention(q, k, v, "sink", s_ref, scale=0.3)
    torch.testing.assert_close(eager, ref, rtol=1e-10, atol=1e-12)
    ref_grads = _grads(ref, leaves)
    for ge, gr in zip(eager_grads, ref_grads):
        torch.testing.assert_close(ge, gr, rtol=1e-9, atol=1e-11)


def test_softmax1_computes_no_sink_gradient(monkeypatch):
    """softmax1's sink is the constant 0: the fused path gets no sink tensor and never computes
    a sink gradient, eager or through the custom op; the learned sink does."""
    A = importlib.import_module("offbyone.attention")  # the package exports a function of that name
    calls = []
    real = A._sink_grad
    monkeypatch.setattr(A, "_sink_grad", lambda *a: calls.append(1) or real(*a))
    (q, k, v), s = _inputs(1, 2, 16, 8, seed=2)
    fast_attention(q, k, v, "softmax1").sum().backward()
    torch.ops.offbyone.sink_attention(q, k, v, None, True, 0.3, "cpu_flash")[0].sum().backward()
    assert calls == []
    fast_attention(q, k, v, "sink", s).sum().backward()
    assert calls == [1] and s.grad is not None


def test_custom_op_passes_opcheck_without_a_sink_tensor():
    (q, k, v), _ = _inputs(2, 3, 9, 8, seed=6, sink=False)
    torch.library.opcheck(torch.ops.offbyone.sink_attention.default,
                          (q, k, v, None, True, 0.3, "cpu_flash"))


def test_kernel_choice_is_made_once_per_shape_and_switches(monkeypatch):
    A = importlib.import_module("offbyone.attention")  # the package exports a function of that name
    calls = []
    real = A._choose_kernel
    monkeypatch.setattr(A, "_choose_kernel", lambda *a: calls.append(a[0].shape) or real(*a))
    monkeypatch.setattr(A, "_KERNEL_CHOICE", {})
    (q, k, v), _ = _inputs(1, 2, 8, 16, sink=False)
    for _ in range(3):
        assert fused_kernel_for(q, k, v) == "cpu_flash"
    assert len(calls) == 1
    (q2, k2, v2), _ = _inputs(1, 2, 9, 16, sink=False)
    assert fused_kernel_for(q2, k2, v2) == "cpu_flash" and len(calls) == 2
    assert fused_kernel_for(q, k, v, causal=False) == "cpu_flash" and len(calls) == 3
    monkeypatch.setattr(A, "_switches", lambda device: ("flipped",))  # a switch changed
    assert fused_kernel_for(q, k, v) == "cpu_flash" and len(calls) == 4


def test_cuda_kernel_order_and_cudnn_only_when_asked(monkeypatch):
    """The CUDA choice reads SDPA's own checks (faked here: this test runs anywhere): flash
    before memory-efficient; cuDNN, unverified on a GPU so far, only with OFFBYONE_SINK_CUDNN=1."""
    import torch.backends.cuda as bc
    A = importlib.import_module("offbyone.attention")  # the package exports a function of that name
    fake = type("Q", (), {"device": torch.device("cuda", 0), "shape": (2, 4, 64, 64),
                          "dtype": torch.bfloat16})()
    monkeypatch.setattr(bc, "SDPAParams", lambda *a: None)
    ok = {"flash": True, "efficient": True, "cudnn": True}
    monkeypatch.setattr(bc, "can_use_flash_attention", lambda p: ok["flash"])
    monkeypatch.setattr(bc, "can_use_efficient_attention", lambda p: ok["efficient"])
    monkeypatch.setattr(bc, "can_use_cudnn_attention", lambda p: ok["cudnn"])
    switches = {"asked": False}
    monkeypatch.setattr(A, "_switches", lambda d: (True, True, True, switches["asked"]))
    assert A._choose_kernel(fake, fake, fake, True) == "cuda_flash"
    switches["asked"] = True
    assert A._choose_kernel(fake, fake, fake, True) == "cuda_cudnn"
    ok["cudnn"] = False
    assert A._choose_kernel(fake, fake, fake, True) == "cuda_flash"
    ok["flash"] = False
    assert A._choose_kernel(fake, fake, fake, True) == "cuda_efficient"
    ok["efficient"] = False
    assert A._choose_kernel(fake, fake, fake, True) is None
