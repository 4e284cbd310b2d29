"""The attention math, in one place.

softmax1 (Miller, "Attention Is Off By One", 2023) is softmax with an extra logit fixed at 0
whose value vector is zero, so a head may put (almost) no weight anywhere:

    softmax1(x)_i = exp(x_i) / (1 + sum_j exp(x_j))

The gpt-oss learned sink generalises the fixed 0 to a learned per-head logit s_h:

    sink(x)_i = exp(x_i) / (exp(s_h) + sum_j exp(x_j)),      softmax1 = sink with s_h = 0.

Both equal softmax(x)_i * exp(lse - logaddexp(lse, s_h)), lse = logsumexp(x), which is what the
fast path uses: a fused attention kernel returns the softmax output and the per-query lse, and
the sink output is out * exp(lse - lse1) with lse1 = logaddexp(lse, s_h); the kernel's own
backward, handed lse1, differentiates the sink attention exactly. Nothing T x T is materialised.

Every variant has a plain reference (`reference_attention`) that materialises the probabilities;
the tests compare every fast path against it in float64, values and gradients.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F


# --------------------------------------------------------------------------------------------
# Probability functions (materialised). All are safe for -inf (masked) entries.

def sink_softmax(x: torch.Tensor, sink: torch.Tensor | float, dim: int = -1) -> torch.Tensor:
    """exp(x_i) / (exp(sink) + sum_j exp(x_j)), stable for any finite logits and -inf entries.

    `sink` broadcasts against x with `dim` reduced (keepdim). The max m = max(max_j x_j, sink) is
    subtracted from *every* term, the sink included: exp(x - m) / (exp(sink - m) + sum exp(x - m)).
    Subtracting the row max and then adding a plain 1 (instead of exp(sink - m)) is the classic
    bug that caps every weight at 0.5; the tests check it is caught.
    """
    sink = torch.as_tensor(sink, dtype=x.dtype, device=x.device)
    # The result does not depend on m, so m carries no gradient (as in torch.softmax).
    m = torch.maximum(x.detach().amax(dim=dim, keepdim=True), sink.detach())
    e = torch.exp(x - m)
    return e / (torch.exp(sink - m) + e.sum(dim=dim, keepdim=True))


def softmax1(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Miller's softmax1: exp(x_i) / (1 + sum_j exp(x_j)). A fully masked row gives zeros."""
    return sink_softmax(x, 0.0, dim=dim)


def softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Plain softmax, except that a fully masked (all -inf) row gives zeros instead of NaN."""
    m = x.detach().amax(dim=dim, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))  # all -inf row: any finite m
    e = torch.exp(x - m)
    denom = e.sum(dim=dim, keepdim=True)
    return e / torch.where(denom > 0, denom, torch.ones_like(denom))


def clipped_softmax(x: torch.Tensor, gamma: float, zeta: float = 1.0, dim: int = -1) -> torch.Tensor:
    """Bondarenko et al.'s clipped softmax: clip((zeta - gamma) * softmax(x) + gamma, 0, 1).

    With gamma < 0 small probabilities become exact zeros (a head can attend to nothing without
    pushing its logits to -inf), and with zeta > 1 large ones become exact ones."""
    return torch.clamp((zeta - gamma) * softmax(x, dim=dim) + gamma, 0.0, 1.0)


def softpick(x: torch.Tensor, dim: int = -1, eps: float = 1e-6) -> torch.Tensor:
    """Zuhri et al.'s rectified softmax: ReLU(exp(x_i) - 1) / sum_j |exp(x_j) - 1|.

    Stable form with m = max(max_j x_j, 0): ReLU(e^(x-m) - e^(-m)) / (sum |e^(x-m) - e^(-m)| + eps).
    Non-positive logits get exactly 0; masked (-inf) entries take no part in the denominator, and
    a fully masked row gives zeros. Its derivative at a score of 0 is about 1/eps, more than
    float16 can hold: train it in bfloat16 or float32."""
    live = x > float("-inf")
    # unlike softmax, the eps makes the result depend on m, so m keeps its gradient
    m = x.masked_fill(~live, float("-inf")).amax(dim=dim, keepdim=True).clamp(min=0.0)
    # e^(x-m) - e^(-m) without cancellation for small |x| (bf16 would lose it all):
    # e^(x-m) * -expm1(-x) for x >= 0, e^(-m) * expm1(x) for x < 0; each branch sees only
    # its own side of 0, so neither overflows and no NaN reaches the gradient
    pos = x >= 0
    xp = torch.where(pos, x, torch.zeros_like(x))
    xn = torch.where(pos, torch.zeros_like(x), x)
    e = torch.where(pos, torch.exp(xp - m) * -torch.expm1(-xp), torch.exp(-m) * torch.expm1(xn))
    e = torch.where(live, e, torch.zeros_like(e))
    return torch.relu(e) / (e.abs().sum(dim=dim, keepdim=True) + eps)


# --------------------------------------------------------------------------------------------
# The registry of attention variants. A variant is a normaliser (how scores become weights)
# and, optionally, a gate on the attention output (applied by the model, see model.py).

NORMALISERS = ("softmax", "sink", "clipped", "softpick")
GATES = ("none", "gated", "outgate")


@dataclass(frozen=True)
class Variant:
    name: str
    normaliser: str       # one of NORMALISERS
    has_sink: bool        # a sink logit enters the normaliser
    learned_sink: bool    # ... and it is a trainable per-head parameter
    gate: str             # one of GATES: the gate this variant brings
    fused: bool           # a fast path that never materialises the probabilities exists
    description: str


VARIANTS: dict[str, Variant] = {
    "softmax": Variant("softmax", "softmax", False, False, "none", True,
                       "standard softmax attention"),
    "softmax1": Variant("softmax1", "sink", True, False, "none", True,
                        "Miller's softmax1: an extra logit fixed at 0 with a zero value"),
    "sink": Variant("sink", "sink", True, True, "none", True,
                    "gpt-oss learned sink: one trainable logit per head, no value vector"),
    "clipped": Variant("clipped", "clipped", False, False, "none", False,
                       "Bondarenko et al.'s clipped softmax, gamma = -alpha / T, zeta = 1 "
                       "(needs the materialised probabilities)"),
    "softpick": Variant("softpick", "softpick", False, False, "none", False,
                        "Zuhri et al.'s rectified softmax (needs the materialised probabilities)"),
    "gated": Variant("gated", "softmax", False, False, "gated", True,
                     "Bondarenko et al.'s gated attention: per head sigmoid(Linear(d_head -> 1))"),
    "outgate": Variant("outgate", "softmax", False, False, "outgate", True,
                       "Qiu et al.'s output gate (G1): attention output * sigmoid(X W)"),
}

IMPLEMENTATIONS = ("fast", "reference")


def get_variant(name: str) -> Variant:
    if not isinstance(name, str) or name not in VARIANTS:
        raise ValueError(f"unknown attention variant {name!r}; valid choices: {', '.join(VARIANTS)}")
    return VARIANTS[name]


def _check_impl(impl: str) -> None:
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"unknown attention implementation {impl!r}; "
                         f"valid choices: {', '.join(IMPLEMENTATIONS)}")


def _sink_logits(variant: Variant, sink: torch.Tensor | None, n_head: int,
                 like: torch.Tensor, fixed_as_none: bool = False) -> torch.Tensor | None:
    """The per-head sink logit as a (H,) tensor, or None for plain softmax (and, with
    `fixed_as_none`, for softmax1's fixed 0, which the fused path handles without a tensor)."""
    if not variant.has_sink:
        if sink is not None:
            raise ValueError(f"attention variant {variant.name!r} takes no sink logit")
        return None
    if variant.learned_sink:
        if sink is None:
            raise ValueError("attention variant 'sink' needs a sink logit tensor of shape (H,)")
        if sink.shape != (n_head,):
            raise ValueError(f"sink logit must have shape ({n_head},), got {tuple(sink.shape)}")
        return sink
    if sink is not None:
        raise ValueError("softmax1 fixes its sink logit at 0; pass sink=None "
                         "(use variant 'sink' for a learned one)")
    if fixed_as_none:
        return None
    return torch.zeros(n_head, dtype=like.dtype, device=like.device)


# --------------------------------------------------------------------------------------------
# Reference path: materialise the (T, S) probabilities.

def window_mask(T: int, S: int, window: int | None = None, keep: int = 0,
                device=None) -> torch.Tensor:
    """(T, S) bool, True where query t may see key j: causal (j <= t) and, with a window, only
    the `window` most recent keys (t - j < window) plus the first `keep` positions, which stay
    visible whatever the window (StreamingLLM's kept initial tokens)."""
    t = torch.arange(T, device=device).view(-1, 1)
    j = torch.arange(S, device=device).view(1, -1)
    mask = j <= t
    if window is not None:
        if window < 1 or keep < 0:
            raise ValueError(f"window must be >= 1 and keep >= 0, got window={window}, keep={keep}")
        mask &= (t - j < window) | (j < keep)
    return mask


def attention_probs(q, k, variant: str = "softmax", sink: torch.Tensor | None = None,
                    causal: bool = True, scale: float | None = None,
                    clip_alpha: float = 4.0, window: int | None = None,
                    keep: int = 0, score_hook=None) -> torch.Tensor:
    """The materialised attention probabilities (B, H, T, S) of q (B, H, T, D), k (B, H, S, D).

    Causal means query t sees keys 0..t (top-left aligned, as SDPA's is_causal). For `clipped`,
    gamma = -clip_alpha / S with S the number of keys (Bondarenko et al.'s T). `window` and `keep`
    (causal only) restrict each query to its `window` latest keys plus the first `keep`: an
    evaluation-time sliding window. The implicit zero logit of the sink variants stays.
    `score_hook`, if given, is applied to the scaled scores before the mask (a quantizer, say)."""
    var = get_variant(variant)
    B, H, T, D = q.shape
    S = k.shape[-2]
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    s = _sink_logits(var, sink, H, q)
    att = (q @ k.transpose(-2, -1)) * scale  # (B, H, T, S)
    if score_hook is not None:
        att = score_hook(att)
    if causal:
        att = att.masked_fill(~window_mask(T, S, window, keep, q.device), float("-inf"))
    elif window is not None:
        raise ValueError("a sliding window needs causal attention")
    if var.normaliser == "clipped":
        return clipped_softmax(att, gamma=-clip_alpha / S)
    if var.normaliser == "softpick":
        return softpick(att)
    if s is None:
        return softmax(att, dim=-1)
    return sink_softmax(att, s.to(att.dtype).view(1, H, 1, 1), dim=-1)


def reference_attention(q, k, v, variant: str = "softmax", sink: torch.Tensor | None = None,
                        causal: bool = True, scale: float | None = None, clip_alpha: float = 4.0):
    """Plain attention that materialises the probabilities. Returns (out, probs).

    q: (B, H, T, D), k and v: (B, H, S, D). out: (B, H, T, D), probs: (B, H, T, S).
    Gates are not part of it: the model applies them to the output.
    """
    probs = attention_probs(q, k, variant, sink, causal, scale, clip_alpha)
    return probs @ v, probs


# --------------------------------------------------------------------------------------------
# Fast path: fused attention, rescaled by the exact exp(lse - lse1) correction.

# The fused kernels that return the logsumexp, and their backwards, as PyTorch's own SDPA calls
# them (no dropout). Each forward returns (out, lse, extras): extras are what its backward needs
# besides the tensors. The CUDA memory-efficient kernel pads lse along T to a multiple of 32;
# cuDNN's lse has shape (B, H, T, 1).
FUSED_KERNELS = ("cpu_flash", "cuda_flash", "cuda_efficient", "cuda_cudnn")
# cuDNN is what SDPA picks for softmax on Hopper, but the sink path through it has not yet been
# checked on a GPU against the float64 reference: it runs only when asked for (kernel
# "cuda_cudnn", or OFFBYONE_SINK_CUDNN=1 for the automatic choice); `make gpu-check` checks and
# times it beside the others.
CUDNN_ENV = "OFFBYONE_SINK_CUDNN"


def _kernel_forward(kernel: str, q, k, v, causal: bool, scale: float):
    if kernel == "cpu_flash":
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q, k, v, 0.0, causal, scale=scale)
        return out, lse, ()
    if kernel == "cuda_flash":
        out, lse, cum_q, cum_k, max_q, max_k, seed, offset, _ = (
            torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, causal, False,
                                                                scale=scale))
        return out, lse, (seed, offset)
    if kernel == "cuda_efficient":
        out, lse, seed, offset = torch.ops.aten._scaled_dot_product_efficient_attention(
            q, k, v, None, True, 0.0, causal, scale=scale)
        return out, lse, (seed, offset)
    if kernel == "cuda_cudnn":
        out, lse, cum_q, cum_k, max_q, max_k, seed, offset, _ = (
            torch.ops.aten._scaled_dot_product_cudnn_attention(q, k, v, None, True, 0.0, causal,
                                                               False, scale=scale))
        return out, lse, (seed, offset)
    raise ValueError(f"unknown fused kernel {kernel!r}; valid choices: {', '.join(FUSED_KERNELS)}")


def _kernel_backward(kernel: str, grad, q, k, v, out, lse, seed, offset, causal: bool,
                     scale: float):
    """The kernel's own backward. Dense inputs: no cumulative lengths; the maximum lengths are
    T and S."""
    T, S = q.shape[-2], k.shape[-2]
    if kernel == "cpu_flash":
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
            grad, q, k, v, out, lse, 0.0, causal, scale=scale)
    if kernel == "cuda_flash":
        return torch.ops.aten._scaled_dot_product_flash_attention_backward(
            grad, q, k, v, out, lse, None, None, T, S, 0.0, causal, seed, offset, scale=scale)
    if kernel == "cuda_cudnn":
        # cuDNN caches its graph by layout: the incoming gradient keeps the output's strides
        if grad.stride() != out.stride():
            grad = torch.empty_like(out).copy_(grad)
        return torch.ops.aten._scaled_dot_product_cudnn_attention_backward(
            grad, q, k, v, out, lse, seed, offset, None, None, None, T, S, 0.0, causal,
            scale=scale)
    return torch.ops.aten._scaled_dot_product_efficient_attention_backward(
        grad, q, k, v, None, out, lse, seed, offset, 0.0, [True, True, True, False], causal,
        scale=scale)[:3]


# Math. The kernel returns the softmax output `out` and the per-query logsumexp `lse`. With the
# sink, the normaliser is lse1 = logaddexp(lse, s), so out1 = out * exp(lse - lse1), and the sink
# probabilities are exp(x - lse1): the softmax probabilities of the kernel's own backward once it
# is handed lse1 in place of lse. The stock backward called with the unmodified incoming
# gradient, out1 and lse1 therefore gives exactly dq, dk, dv (the Jacobian of
# p_j = e^x_j / (e^s + sum e^x) in x has the softmax form p_j (delta_jk - p_k), and its
# D = rowsum(dO * O) term is computed from out1). Nothing (B, H, T, D) is allocated beyond what
# fused softmax attention allocates. The sink gradient is
# ds_h = -sum_{b,t} rowsum(grad * out1) * p_sink, with p_sink = exp(s - lse1); softmax1 has no
# sink tensor (s is None: the fixed logit 0), so it has no sink gradient to compute.
#
# Two registrations share these functions. Eager code calls them through a plain
# autograd.Function (`_SinkAttention`): the least Python per call. Code that torch.compile
# traces calls a pair of torch.library custom ops (forward and backward) with fake
# implementations and an autograd registration, so a model compiles through the sink path as one
# graph (an autograd.Function calling private aten kernels would break it). The fake
# implementations are the real ones run on fake tensors: the aten kernels' own shape functions
# give every output's shape, dtype and device.

def _rows(lse: torch.Tensor, T: int) -> torch.Tensor:
    """The (B, H, T) view of a kernel's lse: cuDNN's is (B, H, T, 1), the efficient kernel's is
    padded along T."""
    if lse.dim() == 4:
        return lse[..., 0]
    return lse if lse.shape[-1] == T else lse[..., :T]


def _heads(s: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The per-head logits (H,) shaped to broadcast against `like` (B, H, ...), in its dtype."""
    return s.to(like.dtype).view((1, -1) + (1,) * (like.dim() - 2))


def _sink_forward(q, k, v, s, causal: bool, scale: float, kernel: str):
    """(out1, lse1, philox_seed, philox_offset); the last two are what the CUDA kernels'
    backwards take (unused without dropout; empty on CPU).

    With x = lse - s: lse1 = s + log(1 + e^x) and the weight left to the real keys is
    e^(lse - lse1) = sigmoid(x). A few elementwise kernels over (B, H, T), each vectorised in any
    layout the kernel's lse comes in (a sink broadcast across a transposed lse is not: logaddexp
    over it cost ten times as much), and one over the output."""
    out, lse, extras = _kernel_forward(kernel, q, k, v, causal, scale)
    T = q.shape[-2]
    zero = lse.new_zeros(())
    if s is None:  # softmax1: s = 0
        x, lse1 = lse, torch.logaddexp(lse, zero)
    else:
        sh = _heads(s, lse)
        x = lse - sh
        lse1 = torch.logaddexp(x, zero).add_(sh)
    g = torch.sigmoid(_rows(x, T))
    out1 = out.mul_(g.unsqueeze(-1).to(out.dtype))  # in place: the kernel's output is ours
    seed, offset = extras if extras else (q.new_empty(0), q.new_empty(0))
    return out1, lse1, seed, offset


def _sink_grad(grad, out1, lse1, s: torch.Tensor) -> torch.Tensor:
    """ds_h = -sum_{b,t} rowsum(grad * out1) * exp(s_h - lse1), summed in at least fp32."""
    T = out1.shape[-2]
    acc = torch.promote_types(grad.dtype, torch.float32)  # bf16/fp16 sum in fp32
    # rowsum(grad * out1) as a batched (1 x D) @ (D x 1): no (B, H, T, D) temporary (on the CPU
    # an elementwise product and sum took twice as long, most of it allocating that temporary)
    dot = (grad.to(acc).unsqueeze(-2) @ out1.to(acc).unsqueeze(-1)).view(out1.shape[:-1])
    rows = _rows(lse1, T)
    p_sink = torch.exp(_heads(s, rows) - rows)
    return -(dot * p_sink.to(acc)).sum(dim=(0, 2)).to(s.dtype)


class _SinkAttention(torch.autograd.Function):
    """The eager registration (see above)."""

    @staticmethod
    def forward(ctx, q, k, v, s, causal: bool, scale: float, kernel: str):
        out1, lse1, seed, offset = _sink_forward(q, k, v, s, causal, scale, kernel)
        ctx.save_for_backward(q, k, v, s, out1, lse1, seed, offset)
        ctx.causal, ctx.scale, ctx.kernel = causal, scale, kernel
        return out1

    @staticmethod
    def backward(ctx, grad):
        q, k, v, s, out1, lse1, seed, offset = ctx.saved_tensors
        dq, dk, dv = _kernel_backward(ctx.kernel, grad.contiguous(), q, k, v, out1, lse1, seed,
                                      offset, ctx.causal, ctx.scale)
        ds = _sink_grad(grad, out1, lse1, s) if ctx.needs_input_grad[3] else None
        return dq, dk, dv, ds, None, None, None


def _resolve_kernel(kernel: str, q, k, v, causal: bool) -> str:
    """"cuda" means: the CUDA kernel SDPA would pick for these inputs, decided inside the op
    (on real or fake tensors alike), so compiled code need not trace the choice."""
    if kernel != "cuda":
        return kernel
    chosen = fused_kernel_for(q, k, v, causal)
    if chosen is None:
        raise RuntimeError("no fused CUDA attention kernel can run these inputs (head size "
                           f"{q.shape[-1]}, dtype {q.dtype}); enable flash or memory-efficient SDPA")
    return chosen


def _sink_attention_impl(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                         s: torch.Tensor | None, causal: bool, scale: float, kernel: str
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    out1, lse1, seed, offset = _sink_forward(q, k, v, s, causal, scale,
                                             _resolve_kernel(kernel, q, k, v, causal))
    # a custom op's outputs may not alias each other or the inputs
    return out1, lse1, seed.clone(), offset.clone()


def _sink_attention_backward_impl(grad: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                                  v: torch.Tensor, out1: torch.Tensor, lse1: torch.Tensor,
                                  seed: torch.Tensor, offset: torch.Tensor, causal: bool,
                                  scale: float, kernel: str
                                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    kernel = _resolve_kernel(kernel, q, k, v, causal)
    dq, dk, dv = _kernel_backward(kernel, grad, q, k, v, out1, lse1, seed, offset, causal, scale)
    return dq, dk, dv


# each op's fake implementation is its real one run on fake tensors
_sink_attention_op = torch.library.custom_op("offbyone::sink_attention", mutates_args=())(
    _sink_attention_impl)
_sink_attention_op.register_fake(_sink_attention_impl)
_sink_attention_backward_op = torch.library.custom_op(
    "offbyone::sink_attention_backward", mutates_args=())(_sink_attention_backward_impl)
_sink_attention_backward_op.register_fake(_sink_attention_backward_impl)


def _sink_setup_context(ctx, inputs, output):
    q, k, v, s, causal, scale, kernel = inputs
    out1, lse1, seed, offset = output
    ctx.save_for_backward(q, k, v, s, out1, lse1, seed, offset)
    ctx.causal, ctx.scale, ctx.kernel = causal, scale, kernel
    ctx.mark_non_differentiable(lse1, seed, offset)


def _sink_backward(ctx, grad, _lse1_grad, _seed_grad, _offset_grad):
    q, k, v, s, out1, lse1, seed, offset = ctx.saved_tensors
    dq, dk, dv = _sink_attention_backward_op(grad.contiguous(), q, k, v, out1, lse1, seed,
                                             offset, ctx.causal, ctx.scale, ctx.kernel)
    ds = _sink_grad(grad, out1, lse1, s) if s is not None and ctx.needs_input_grad[3] else None
    return dq, dk, dv, ds, None, None, None


_sink_attention_op.register_autograd(_sink_backward, setup_context=_sink_setup_context)


def sink_fused(q, k, v, s, causal: bool, scale: float, kernel: str) -> torch.Tensor:
    """Softmax-with-sink attention on a fused kernel, exact backward. `s`: the per-head logit,
    shape (H,), or None for softmax1's fixed 0. `kernel`: one of FUSED_KERNELS, or "cuda" to let
    the op pick SDPA's CUDA kernel (inside traced code)."""
    if kernel not in FUSED_KERNELS + ("cuda",):
        raise ValueError(f"unknown fused kernel {kernel!r}; valid choices: "
                         f"{', '.join(FUSED_KERNELS)}, cuda")
    if torch.compiler.is_compiling():
        return torch.ops.offbyone.sink_attention(q, k, v, s, causal, float(scale), kernel)[0]
    kernel = _resolve_kernel(kernel, q, k, v, causal)
    return _SinkAttention.apply(q, k, v, s, causal, float(scale), kernel)


def _sink_sdpa_appended(q, k, v, s, causal: bool, scale: float):
    """Device-independent exact path: append one key with logit s_h (through an additive mask)
    and a zero value, then call SDPA with an explicit (T, S + 1) mask. Autograd handles it."""
    B, H, T, D = q.shape
    S = k.shape[-2]
    zeros = q.new_zeros(B, H, 1, D)
    k1 = torch.cat([k, zeros], dim=2)
    v1 = torch.cat([v, zeros], dim=2)
    bias = q.new_zeros(T, S)
    if causal:
        bias = bias.masked_fill(~torch.ones(T, S, dtype=torch.bool, device=q.device).tril(),
                                float("-inf"))
    # the appended key's logit is q . 0 * scale + bias = s_h
    sink_col = s.to(q.dtype).view(1, H, 1, 1).expand(1, H, T, 1)
    mask = torch.cat([bias.view(1, 1, T, S).expand(1, H, T, S), sink_col], dim=-1)
    return F.scaled_dot_product_attention(q, k1, v1, attn_mask=mask, scale=scale)


def fused_kernel_for(q, k, v, causal: bool = True) -> str | None:
    """The fused kernel the sink variants run on for these inputs, or None when there is none
    (the exact appended-key path is used then). On CUDA it is the kernel PyTorch's SDPA would
    pick for softmax, flash before memory-efficient, as far as the switches in
    torch.backends.cuda allow (cuDNN first only with OFFBYONE_SINK_CUDNN=1); all need a head
    size that is a multiple of 8. The choice is made once per device, dtype, shapes, strides,
    gradient need, causality and switches, then read from a cache."""
    key = (q.device, q.dtype, causal, _switches(q.device),
           q.requires_grad or k.requires_grad or v.requires_grad,
           q.shape, k.shape, v.shape, q.stride(), k.stride(), v.stride())
    chosen = _KERNEL_CHOICE.get(key, False)
    if chosen is False:
        chosen = _KERNEL_CHOICE[key] = _choose_kernel(q, k, v, causal)
    return chosen


_KERNEL_CHOICE: dict[tuple, str | None] = {}


def _switches(device: torch.device) -> tuple:
    """What the choice depends on besides the inputs: SDPA's backend switches and ours."""
    if device.type != "cuda":
        return ()
    from torch.backends import cuda as bc
    return (bc.flash_sdp_enabled(), bc.mem_efficient_sdp_enabled(), bc.cudnn_sdp_enabled(),
            os.environ.get(CUDNN_ENV, "0") == "1")


def _choose_kernel(q, k, v, causal: bool) -> str | None:
    if q.device.type == "cpu":
        ok = q.dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16)
        return "cpu_flash" if ok else None
    if q.device.type != "cuda" or q.shape[-1] % 8 or q.dtype == torch.float64:
        return None
    from torch.backends import cuda as bc
    flash, efficient, cudnn, cudnn_asked = _switches(q.device)
    params = bc.SDPAParams(q, k, v, None, 0.0, causal, False)
    if cudnn_asked and cudnn and bc.can_use_cudnn_attention(params):
        return "cuda_cudnn"
    if flash and bc.can_use_flash_attention(params):
        return "cuda_flash"
    if efficient and bc.can_use_efficient_attention(params):
        return "cuda_efficient"
    return None


def fast_attention(q, k, v, variant: str = "softmax", sink: torch.Tensor | None = None,
                   causal: bool = True, scale: float | None = None,
                   clip_alpha: float = 4.0) -> torch.Tensor:
    """Fused attention; never materialises the probabilities in Python for the variants that
    have a fused path (`Variant.fused`). Clipped softmax and softpick need the probabilities
    themselves (clipping and rectification act on them), so they fall back to the reference.

    q, k, v: (B, H, T, D). Returns (B, H, T, D).
    """
    var = get_variant(variant)
    B, H, T, D = q.shape
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    if not var.fused:
        return reference_attention(q, k, v, variant, sink, causal, scale, clip_alpha)[0]
    s = _sink_logits(var, sink, H, q, fixed_as_none=True)
    if not var.has_sink:
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)
    if causal and k.shape[-2] != T:
        raise ValueError("causal fast attention needs as many keys as queries")
    if torch.compiler.is_compiling():
        # traced code: a CUDA kernel is picked inside the op, so the choice is no graph break
        kernel = ("cpu_flash" if q.device.type == "cpu" else
                  "cuda" if q.device.type == "cuda" and D % 8 == 0 and q.dtype != torch.float64
                  else None)
    else:
        kernel = fused_kernel_for(q, k, v, causal)
    if kernel is not None:
        return sink_fused(q, k, v, s, causal, scale, kernel)  # strided views are fine
    if s is None:
        s = q.new_zeros(H)
    return _sink_sdpa_appended(q, k, v, s, causal, scale)


def attention(q, k, v, variant: str = "softmax", sink: torch.Tensor | None = None,
              causal: bool = True, scale: float | None = None, impl: str = "fast",
              clip_alpha: float = 4.0) -> torch.Tensor:
    """Attention of any registered variant's normaliser. q, k, v: (B, H, T, D) -> (B, H, T, D).
    The gates of `gated` and `outgate` act on this output and live in the model."""
    _check_impl(impl)
    if impl == "fast":
        return fast_attention(q, k, v, variant, sink, causal, scale, clip_alpha)
    return reference_attention(q, k, v, variant, sink, causal, scale, clip_alpha)[0]
