"""Post-training quantization, simulated ("fake quant"), after Bondarenko et al. (2023).

Uniform affine quantization q(x) = (clamp(round(x / s) + z, qmin, qmax) - z) * s, with round
half to even as PyTorch's own fake-quantize ops do.

- Weights: symmetric (z = 0), per tensor or per output channel, range from min-max or the
  MSE-optimal clipping of it.
- Activations: asymmetric per tensor, static ranges estimated on calibration batches from the
  training split (running min-max with momentum 0.9, or a running percentile), then frozen.
- Quantized: the inputs of every Linear (attention qkv, output and gate projections, MLP layers;
  the weights of per-head gates), the
  embedding tables and their sum, the LayerNorm outputs inside the blocks, the attention
  probabilities and outputs, the MLP outputs and the residual stream after every block. Kept in
  full precision, as Bondarenko et al. do: the final LayerNorm and the LM head.

`quantize_model` returns a quantized copy; the model it is given is never modified.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn as nn

from .metrics import loss_on

MOMENTUM = 0.9


def quantize(x: torch.Tensor, scale, zero_point, qmin: int, qmax: int) -> torch.Tensor:
    """Fake-quantize x with the given scale and zero point (tensors broadcast against x)."""
    inv = 1.0 / scale
    return (torch.clamp(torch.round(x * inv + zero_point), qmin, qmax) - zero_point) * scale


def symmetric_qparams(absmax: torch.Tensor, bits: int):
    """Scale for a symmetric signed grid [-(2^(b-1) - 1), 2^(b-1) - 1] covering +-absmax."""
    qmax = 2 ** (bits - 1) - 1
    scale = torch.clamp(absmax / qmax, min=1e-12)
    return scale, torch.zeros_like(scale), -qmax, qmax


def asymmetric_qparams(lo: torch.Tensor, hi: torch.Tensor, bits: int):
    """Scale and integer zero point of an unsigned grid [0, 2^b - 1] covering [lo, hi] (and 0)."""
    lo = torch.clamp(lo, max=0.0)
    hi = torch.clamp(hi, min=0.0)
    qmax = 2 ** bits - 1
    scale = torch.clamp((hi - lo) / qmax, min=1e-12)
    zero = torch.clamp(torch.round(-lo / scale), 0, qmax)
    return scale, zero, 0, qmax


def quantize_weight(w: torch.Tensor, bits: int, granularity: str = "tensor",
                    method: str = "minmax") -> torch.Tensor:
    """Symmetric fake-quantized copy of a weight; per 'tensor' or per output 'channel' (row)."""
    if granularity not in ("tensor", "channel"):
        raise ValueError(f"weight granularity {granularity!r} is not one of tensor, channel")
    if method not in ("minmax", "mse"):
        raise ValueError(f"weight range method {method!r} is not one of minmax, mse")
    w = w.detach()
    if granularity == "tensor":
        absmax = w.abs().max()
    else:
        absmax = w.abs().reshape(w.shape[0], -1).amax(1).view(-1, *([1] * (w.dim() - 1)))
    if method == "minmax":
        return quantize(w, *symmetric_qparams(absmax, bits))
    # MSE-optimal range: the clipping of absmax (searched on a grid) with the least squared error
    best, best_err = None, None
    for frac in torch.linspace(0.3, 1.0, 36):
        q = quantize(w, *symmetric_qparams(absmax * frac, bits))
        err = (q - w).pow(2)
        err = err.sum() if granularity == "tensor" else err.reshape(w.shape[0], -1).sum(1)
        if best is None:
            best, best_err = q, err
        else:
            better = err < best_err
            if granularity == "tensor":
                if better:
                    best, best_err = q, err
            else:
                best = torch.where(better.view(-1, *([1] * (w.dim() - 1))), q, best)
                best_err = torch.minimum(err, best_err)
    return best


class ActQuant(nn.Module):
    """Asymmetric per-tensor activation quantizer with a static range.

    While `calibrating`, it passes its input through unchanged and updates its range: running
    min-max (momentum 0.9; the first batch sets it) or a running percentile. Then frozen."""

    def __init__(self, bits: int, method: str = "minmax", percentile: float = 99.99):
        super().__init__()
        if method not in ("minmax", "percentile"):
            raise ValueError(f"activation range method {method!r} is not one of minmax, percentile")
        self.bits, self.method, self.percentile = bits, method, percentile
        self.calibrating = True
        self.register_buffer("lo", torch.tensor(float("nan")))
        self.register_buffer("hi", torch.tensor(float("nan")))

    def _batch_range(self, x):
        x = x.detach().float().flatten()
        if self.method == "minmax":
            return x.min(), x.max()
        if x.numel() > 1_000_000:  # torch.quantile's size limit; a strided sample is plenty
            x = x[:: x.numel() // 1_000_000 + 1]
        q = torch.tensor([1 - self.percentile / 100, self.percentile / 100], device=x.device)
        lo, hi = torch.quantile(x, q)
        return lo, hi

    def forward(self, x):
        if self.calibrating:
            lo, hi = self._batch_range(x)
            if torch.isnan(self.lo):
                self.lo.copy_(lo)
                self.hi.copy_(hi)
            else:
                self.lo.mul_(MOMENTUM).add_((1 - MOMENTUM) * lo)
                self.hi.mul_(MOMENTUM).add_((1 - MOMENTUM) * hi)
            return x
        if torch.isnan(self.lo):
            raise RuntimeError("activation quantizer used before calibration")
        scale, zero, qmin, qmax = asymmetric_qparams(self.lo, self.hi, self.bits)
        return quantize(x, scale.to(x.dtype), zero.to(x.dtype), qmin, qmax)


class QuantLinear(nn.Module):
    """A Linear whose input goes through an activation quantizer and whose weight is quantized."""

    def __init__(self, linear: nn.Linear, wbits: int, abits: int, granularity: str,
                 weight_method: str, act_method: str):
        super().__init__()
        self.act = ActQuant(abits, act_method)
        self.weight = nn.Parameter(quantize_weight(linear.weight, wbits, granularity,
                                                   weight_method), requires_grad=False)
        self.bias = (nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
                     if linear.bias is not None else None)

    def forward(self, x):
        return nn.functional.linear(self.act(x), self.weight, self.bias)


@dataclass
class QuantConfig:
    wbits: int = 8
    abits: int = 8
    weight_granularity: str = "tensor"   # tensor | channel
    weight_method: str = "minmax"        # minmax | mse
    act_method: str = "minmax"           # minmax | percentile

    def __post_init__(self):
        for k in ("wbits", "abits"):
            v = getattr(self, k)
            if not isinstance(v, int) or isinstance(v, bool) or not 2 <= v <= 16:
                raise ValueError(f"{k} must be an integer from 2 to 16, got {v!r}")
        choices = {"weight_granularity": ("tensor", "channel"),
                   "weight_method": ("minmax", "mse"), "act_method": ("minmax", "percentile")}
        for k, valid in choices.items():
            if getattr(self, k) not in valid:
                raise ValueError(f"{k} {getattr(self, k)!r} is not one of {', '.join(valid)}")

    @property
    def name(self) -> str:
        return f"W{self.wbits}A{self.abits}"


def _build_quantized(model, qc: QuantConfig) -> nn.Module:
    """A copy of `model` with quantized weights and uncalibrated activation quantizers."""
    q = copy.deepcopy(model).eval()
    q.set_attention_impl("reference")  # the probabilities must exist to be quantized
    a = lambda: ActQuant(qc.abits, qc.act_method)  # noqa: E731
    # embeddings: untie the LM head (kept in full precision) from the quantized input table
    head = nn.Linear(q.lm_head.in_features, q.lm_head.out_features, bias=False)
    head.weight = nn.Parameter(model.lm_head.weight.detach().clone(), requires_grad=False)
    q.lm_head = head
    for emb in (q.wte, q.wpe):
        emb.weight = nn.Parameter(quantize_weight(emb.weight, qc.wbits, qc.weight_granularity,
                                                  qc.weight_method), requires_grad=False)
    q.hook_embed = a()
    for b in q.blocks:
        for parent, name in ((b.attn, "c_attn"), (b.attn, "c_proj"), (b.mlp, "c_fc"),
                             (b.mlp, "c_proj")):
            setattr(parent, name, QuantLinear(getattr(parent, name), qc.wbits, qc.abits,
                                              qc.weight_granularity, qc.weight_method,
                                              qc.act_method))
        if b.attn.gate == "outgate":
            b.attn.gate_proj = QuantLinear(b.attn.gate_proj, qc.wbits, qc.abits,
                                           qc.weight_granularity, qc.weight_method, qc.act_method)
        elif b.attn.gate == "gated":
            b.attn.gate_weight = nn.Parameter(quantize_weight(
                b.attn.gate_weight, qc.wbits, qc.weight_granularity, qc.weight_method),
                requires_grad=False)
        b.ln_1 = nn.Sequential(b.ln_1, a())
        b.ln_2 = nn.Sequential(b.ln_2, a())
        b.attn.hook_probs = a()
        b.attn.hook_proj = a()
        b.mlp.hook_out = a()
        b.hook_resid = a()
    return q.to(model.lm_head.weight.device)  # the new quantizers' range buffers too


def calibrate_ranges(model, calib_batches, act_method: str = "minmax") -> dict:
    """Static activation ranges {quantizer name: (lo, hi)} from the full-precision activations.

    All quantizers observe at once while passing values through, so the ranges do not depend
    on the bit widths and one calibration serves a whole sweep."""
    q = _build_quantized(model, QuantConfig(wbits=16, abits=16, act_method=act_method))
    # observe the full-precision activations: put the unquantized weights back
    for emb, src in ((q.wte, model.wte), (q.wpe, model.wpe)):
        emb.weight.data.copy_(src.weight.detach())
    for b, src in zip(q.blocks, model.blocks):
        pairs = [(b.attn.c_attn, src.attn.c_attn), (b.attn.c_proj, src.attn.c_proj),
                 (b.mlp.c_fc, src.mlp.c_fc), (b.mlp.c_proj, src.mlp.c_proj)]
        if src.attn.gate == "outgate":
            pairs.append((b.attn.gate_proj, src.attn.gate_proj))
        for qlin, lin in pairs:
            qlin.weight.data.copy_(lin.weight.detach())
        if src.attn.gate == "gated":
            b.attn.gate_weight.data.copy_(src.attn.gate_weight.detach())
    n = 0
    with torch.no_grad():
        for x in calib_batches:
            q(x)
            n += 1
    if n == 0:
        raise ValueError("calibration needs at least one batch")
    return {name: (m.lo.clone(), m.hi.clone()) for name, m in q.named_modules()
            if isinstance(m, ActQuant)}


def quantize_model(model, qc: QuantConfig, calib_batches=None, ranges: dict | None = None):
    """A fake-quantized copy of `model`; `model` is left untouched.

    Activation ranges come from `ranges` (see calibrate_ranges) or are calibrated on
    `calib_batches` (an iterable of (B, T) token tensors), then frozen."""
    if ranges is None:
        if calib_batches is None:
            raise ValueError("quantize_model needs calib_batches or ranges")
        ranges = calibrate_ranges(model, calib_batches, qc.act_method)
    q = _build_quantized(model, qc)
    for name, m in q.named_modules():
        if isinstance(m, ActQuant):
            m.lo.copy_(ranges[name][0])
            m.hi.copy_(ranges[name][1])
            m.calibrating = False
    return q


DEFAULT_SWEEP = ((8, 8), (6, 6), (4, 8), (8, 6), (4, 4))


def sweep(model, calib_batches: list, eval_x: torch.Tensor, eval_y: torch.Tensor,
          bit_widths=DEFAULT_SWEEP, fp_loss: float | None = None, **qkw) -> list[dict]:
    """Validation loss, perplexity and the gap to full precision for each (wbits, abits)."""
    if fp_loss is None:
        fp_loss = loss_on(model, eval_x, eval_y)
    ranges = calibrate_ranges(model, calib_batches, qkw.get("act_method", "minmax"))
    rows = []
    for wb, ab in bit_widths:
        qc = QuantConfig(wbits=wb, abits=ab, **qkw)
        qm = quantize_model(model, qc, ranges=ranges)
        loss = loss_on(qm, eval_x, eval_y)
        rows.append({"config": qc.name, "wbits": wb, "abits": ab, **qkw, "loss": loss,
                     "ppl": float(torch.tensor(loss).exp()), "fp_loss": fp_loss,
                     "gap": loss - fp_loss})
    return rows
