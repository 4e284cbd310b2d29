"""Post-training quantization, simulated ("fake quant"), as Bondarenko et al. (2023) set it up.

Uniform affine quantization q(x) = (clamp(round(x / s) + z, qmin, qmax) - z) * s, with round
half to even, as torch's `fake_quantize_per_tensor_affine` computes it (the tests compare).

- Weights (every Linear, both embedding tables, the learned sink logits, the per-head gate
  weights; biases stay in full precision): symmetric per tensor, range by MSE grid search over
  clippings of the absolute maximum (the authors' choice) or plain min-max; per output channel
  as an option.
- Activations: asymmetric per tensor, static ranges from running min-max (momentum 0.9; the
  first batch sets it) over calibration batches from the training split, then frozen (a running
  percentile is an option).
- Which activations (`SETUPS`):
    fp32_head      the authors' OPT setup: everything except the LM head. The embedding sum;
                   every LayerNorm output, the final one included; q, k, v; the scaled QK^T
                   scores (before the mask and the normaliser); the attention probabilities;
                   the P @ V context, and after the gate where there is one; the output
                   projection; the residual after attention and after the MLP; the MLP's
                   GELU output and its output.
    linear_inputs  offbyone's earlier setup, kept to compare with: the inputs of every Linear,
                   the embedding sum, the LayerNorms inside the blocks, the probabilities, the
                   projections' outputs and the residual after each block; the final LayerNorm,
                   q, k, v, the scores and the mid-block residual in full precision.

`quantize_model` returns a quantized copy; the model it is given is never modified.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn as nn

from .metrics import loss_on, losses_on

MOMENTUM = 0.9
BITS = range(2, 17)

# Quantization points: the activation a quantizer sits on, per block or for the whole model.
# name -> (where: "block" or "model", the attribute path of the hook inside it)
POINTS = {
    "embed": ("model", "hook_embed"),
    "ln_1": ("block", "ln_1"),
    "q": ("block", "attn.hook_q"),
    "k": ("block", "attn.hook_k"),
    "v": ("block", "attn.hook_v"),
    "scores": ("block", "attn.hook_scores"),
    "probs": ("block", "attn.hook_probs"),
    "context": ("block", "attn.hook_context"),      # P @ V, before any gate
    "attn_out": ("block", "attn.hook_out"),         # after the gate, heads merged
    "attn_proj": ("block", "attn.hook_proj"),
    "mid": ("block", "hook_mid"),                   # x + attn(ln_1(x))
    "ln_2": ("block", "ln_2"),
    "mlp_hidden": ("block", "mlp.hook_hidden"),
    "mlp_out": ("block", "mlp.hook_out"),
    "resid": ("block", "hook_resid"),
    "ln_f": ("model", "ln_f"),
}
SETUPS = {
    # attn_out only where a gate makes it differ from the context (see quantizer_names)
    "fp32_head": ("embed", "ln_1", "q", "k", "v", "scores", "probs", "context", "attn_out",
                  "attn_proj", "mid", "ln_2", "mlp_hidden", "mlp_out", "resid", "ln_f"),
    "linear_inputs": ("embed", "ln_1", "probs", "attn_out", "attn_proj", "ln_2", "mlp_hidden",
                      "mlp_out", "resid"),
}
DEFAULT_SETUP = "fp32_head"


def _check_bits(name: str, bits) -> None:
    if not isinstance(bits, int) or isinstance(bits, bool) or bits not in BITS:
        raise ValueError(f"{name} must be an integer from {BITS[0]} to {BITS[-1]}, got {bits!r}")


def _check_choice(name: str, value, valid) -> None:
    if value not in valid:
        raise ValueError(f"{name} {value!r} is not one of {', '.join(valid)}")


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
                    method: str = "mse") -> torch.Tensor:
    """Symmetric fake-quantized copy of a weight; per 'tensor' or per output 'channel' (row).

    method 'mse': the clipping of the absolute maximum (36 candidates from 0.3 to 1 times it)
    whose grid gives the least squared error; 'minmax': the absolute maximum itself."""
    _check_bits("weight bits", bits)
    _check_choice("weight granularity", granularity, ("tensor", "channel"))
    _check_choice("weight range method", method, ("mse", "minmax"))
    w = w.detach()
    per_row = (w.shape[0], -1)
    if granularity == "tensor":
        absmax = w.abs().max()
    else:
        absmax = w.abs().reshape(per_row).amax(1).view(-1, *([1] * (w.dim() - 1)))
    if method == "minmax":
        return quantize(w, *symmetric_qparams(absmax, bits))
    best, best_err = None, None
    for frac in torch.linspace(0.3, 1.0, 36):
        q = quantize(w, *symmetric_qparams(absmax * frac, bits))
        err = (q - w).pow(2)
        err = err.sum() if granularity == "tensor" else err.reshape(per_row).sum(1)
        if best is None:
            best, best_err = q, err
        elif granularity == "tensor":
            if err < best_err:
                best, best_err = q, err
        else:
            best = torch.where((err < best_err).view(-1, *([1] * (w.dim() - 1))), q, best)
            best_err = torch.minimum(err, best_err)
    return best


class ActQuant(nn.Module):
    """Asymmetric per-tensor activation quantizer with a static range.

    While `calibrating`, it passes its input through unchanged and updates its range: running
    min-max (momentum 0.9; the first batch sets it) or a running percentile. Then frozen."""

    def __init__(self, bits: int, method: str = "minmax", percentile: float = 99.99):
        super().__init__()
        _check_bits("activation bits", bits)
        _check_choice("activation range method", method, ("minmax", "percentile"))
        self.bits, self.method, self.percentile = bits, method, percentile
        self.calibrating = True
        self.enabled = True          # False: a frozen quantizer passes its input through (groups)
        self.register_buffer("lo", torch.tensor(float("nan")))
        self.register_buffer("hi", torch.tensor(float("nan")))

    def _batch_range(self, x):
        x = x.detach().float().flatten()
        x = x[torch.isfinite(x)]
        if self.method == "minmax":
            return x.min(), x.max()
        if x.numel() > 1_000_000:  # torch.quantile's size limit; a strided sample is plenty
            x = x[:: x.numel() // 1_000_000 + 1]
        q = torch.tensor([1 - self.percentile / 100, self.percentile / 100], device=x.device)
        lo, hi = torch.quantile(x, q)
        return lo, hi

    def qparams(self):
        """(scale, zero point, qmin, qmax) of the frozen range."""
        if torch.isnan(self.lo):
            raise RuntimeError("activation quantizer used before calibration: pass calibration "
                               "batches (quantize_model(..., calib_batches=...)) or ranges from "
                               "calibrate_ranges")
        return asymmetric_qparams(self.lo, self.hi, self.bits)

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
        if not self.enabled:
            return x
        scale, zero, qmin, qmax = self.qparams()
        return quantize(x, scale.to(x.dtype), zero.to(x.dtype), qmin, qmax)


@dataclass
class QuantConfig:
    wbits: int = 8
    abits: int = 8
    setup: str = DEFAULT_SETUP           # a name in SETUPS
    weight_granularity: str = "tensor"   # tensor | channel
    weight_method: str = "mse"           # mse | minmax
    act_method: str = "minmax"           # minmax | percentile

    def __post_init__(self):
        _check_bits("wbits", self.wbits)
        _check_bits("abits", self.abits)
        _check_choice("quantization setup", self.setup, tuple(SETUPS))
        _check_choice("weight_granularity", self.weight_granularity, ("tensor", "channel"))
        _check_choice("weight_method", self.weight_method, ("mse", "minmax"))
        _check_choice("act_method", self.act_method, ("minmax", "percentile"))

    @property
    def name(self) -> str:
        return f"W{self.wbits}A{self.abits}"


def _get(root: nn.Module, path: str) -> nn.Module:
    for part in path.split("."):
        root = getattr(root, part)
    return root


def _set(root: nn.Module, path: str, module: nn.Module) -> None:
    *parents, last = path.split(".")
    for part in parents:
        root = getattr(root, part)
    setattr(root, last, module)


def quantizer_names(model, setup: str = DEFAULT_SETUP) -> list[str]:
    """The activation quantizers `quantize_model` puts into `model` under `setup`, each named by
    the module path it replaces or wraps, e.g. 'blocks.0.attn.hook_q'. Without a gate the
    attention output before the projection is the P @ V context itself: one quantizer, not two."""
    _check_choice("quantization setup", setup, tuple(SETUPS))
    gated = model.blocks[0].attn.gate != "none"
    out = []
    for point in SETUPS[setup]:
        if setup == "fp32_head" and point == "attn_out" and not gated:
            continue
        where, path = POINTS[point]
        if where == "model":
            out.append(path)
        else:
            out.extend(f"blocks.{i}.{path}" for i in range(len(model.blocks)))
    return out


def _quantize_weights(q: nn.Module, src: nn.Module, qc: QuantConfig) -> None:
    """Replace every weight of `q` (a copy of `src`) by its quantized form, biases kept."""
    def qw(w):
        return nn.Parameter(quantize_weight(w, qc.wbits, qc.weight_granularity, qc.weight_method),
                            requires_grad=False)
    # the LM head stays in full precision: untie it from the (quantized) input table
    head = nn.Linear(q.lm_head.in_features, q.lm_head.out_features, bias=False)
    head.weight = nn.Parameter(src.lm_head.weight.detach().clone(), requires_grad=False)
    q.lm_head = head
    for emb in (q.wte, q.wpe):
        emb.weight = qw(emb.weight)
    for b in q.blocks:
        for lin in (b.attn.c_attn, b.attn.c_proj, b.mlp.c_fc, b.mlp.c_proj):
            lin.weight = qw(lin.weight)
        if b.attn.gate == "outgate":
            b.attn.gate_proj.weight = qw(b.attn.gate_proj.weight)
        elif b.attn.gate == "gated":
            b.attn.gate_weight = qw(b.attn.gate_weight)
        if b.attn.sink is not None:
            b.attn.sink = qw(b.attn.sink)


def _with_quantizers(model, setup: str, abits: int, act_method: str) -> nn.Module:
    """A copy of `model` on the materialising path with an uncalibrated quantizer on every
    activation of `setup` (the LayerNorms are wrapped, the hook points replaced)."""
    q = copy.deepcopy(model).eval()
    q.set_attention_impl("reference")  # the scores and probabilities must exist to be quantized
    for path in quantizer_names(q, setup):
        quantizer = ActQuant(abits, act_method)
        target = _get(q, path)
        _set(q, path, nn.Sequential(target, quantizer) if isinstance(target, nn.LayerNorm)
             else quantizer)
    return q


def _quantizers(q: nn.Module, setup: str) -> dict[str, ActQuant]:
    out = {}
    for path in quantizer_names(q, setup):
        m = _get(q, path)
        out[path] = m[-1] if isinstance(m, nn.Sequential) else m
    return out


def calibrate_ranges(model, calib_batches, act_method: str = "minmax",
                     setup: str = DEFAULT_SETUP) -> dict:
    """Static activation ranges {quantizer name: (lo, hi)} observed on the full-precision model.

    All quantizers observe at once while passing values through unchanged, so the ranges do not
    depend on the bit widths and one calibration serves a whole sweep."""
    q = _with_quantizers(model, setup, 16, act_method)
    n = 0
    with torch.no_grad():
        for x in calib_batches:
            q(x)
            n += 1
    if n == 0:
        raise ValueError("calibration needs at least one batch")
    return {name: (m.lo.clone(), m.hi.clone()) for name, m in _quantizers(q, setup).items()}


def quantize_model(model, qc: QuantConfig, calib_batches=None, ranges: dict | None = None):
    """A fake-quantized copy of `model`; `model` is left untouched.

    Activation ranges come from `ranges` (see calibrate_ranges, same setup) or are calibrated on
    `calib_batches` (an iterable of (B, T) token tensors), then frozen."""
    if ranges is None:
        if calib_batches is None:
            raise ValueError("quantize_model needs calib_batches or ranges")
        ranges = calibrate_ranges(model, calib_batches, qc.act_method, qc.setup)
    q = _with_quantizers(model, qc.setup, qc.abits, qc.act_method)
    _quantize_weights(q, model, qc)
    for name, m in _quantizers(q, qc.setup).items():
        if name not in ranges:
            raise ValueError(f"no calibrated range for quantizer {name!r}: ranges come from "
                             f"another setup or model (calibrate with setup={qc.setup!r})")
        m.lo.copy_(ranges[name][0])
        m.hi.copy_(ranges[name][1])
        m.calibrating = False
    return q.to(model.lm_head.weight.device)


# (wbits, abits): weights and activations together, then activations alone (16-bit weights)
DEFAULT_SWEEP = ((8, 8), (6, 6), (4, 8), (8, 6), (8, 4), (4, 4), (16, 8), (16, 6), (16, 4))


def _calibrated(model, calib_batches: list, eval_x, eval_y, bit_widths, fp_loss, qkw):
    """The full-precision loss (unless given), and the QuantConfig of each (wbits, abits) with
    the activation ranges of one calibration that every setting shares."""
    if fp_loss is None:
        fp_loss = loss_on(model, eval_x, eval_y)
    base = QuantConfig(**qkw)
    ranges = calibrate_ranges(model, calib_batches, base.act_method, base.setup)
    return fp_loss, ranges, [QuantConfig(wbits=wb, abits=ab, **qkw) for wb, ab in bit_widths]


def sweep(model, calib_batches: list, eval_x: torch.Tensor, eval_y: torch.Tensor,
          bit_widths=DEFAULT_SWEEP, fp_loss: float | None = None,
          query_mask: torch.Tensor | None = None, **qkw) -> list[dict]:
    """Validation loss, perplexity and the gap to full precision for each (wbits, abits); with
    a `query_mask` over token ids, also the loss and gap at the positions whose input token is
    in it (`loss_class`, `gap_class`: the testbed's positions after a trigger)."""
    fp_loss, ranges, configs = _calibrated(model, calib_batches, eval_x, eval_y, bit_widths,
                                           fp_loss, qkw)
    fp_class = losses_on(model, eval_x, eval_y, query_mask)[1] if query_mask is not None else None
    rows = []
    for qc in configs:
        loss, in_class = losses_on(quantize_model(model, qc, ranges=ranges), eval_x, eval_y,
                                   query_mask)
        rows.append({"config": qc.name, "wbits": qc.wbits, "abits": qc.abits, "setup": qc.setup,
                     "weight_granularity": qc.weight_granularity,
                     "weight_method": qc.weight_method, "act_method": qc.act_method,
                     "loss": loss, "ppl": float(torch.tensor(loss).exp()), "fp_loss": fp_loss,
                     "gap": loss - fp_loss})
        if fp_class is not None and in_class is not None:
            rows[-1].update(loss_class=in_class, fp_loss_class=fp_class,
                            gap_class=in_class - fp_class)
    return rows


# --- which quantized tensor costs what --------------------------------------------------------
# The activation quantizers grouped by the kind of tensor they sit on; every point of every setup
# belongs to exactly one group (tests check that the groups cover each quantizer once).
GROUPS = {
    "embeddings": ("embed",),
    "LayerNorm outputs": ("ln_1", "ln_2", "ln_f"),
    "q, k, v": ("q", "k", "v"),
    "scores": ("scores",),
    "attention probabilities": ("probs",),
    "context": ("context", "attn_out"),
    "output projection": ("attn_proj",),
    "residual sums": ("mid", "resid"),
    "MLP hidden": ("mlp_hidden",),
    "MLP output": ("mlp_out",),
}
# (wbits, abits) of the attribution: the paper's W8A8, the activation-only W16A6 and W16A4
GROUP_SETTINGS = ((8, 8), (16, 6), (16, 4))
GROUP_MODES = ("only", "all but", "all", "none")


def quantizer_point(name: str) -> str:
    """The quantization point ('q', 'ln_f', ...) of a quantizer named by its module path."""
    for point, (where, path) in POINTS.items():
        if name == path if where == "model" else (
                name.startswith("blocks.") and name.split(".", 2)[2] == path):
            return point
    raise ValueError(f"{name!r} is no quantization point (valid: {', '.join(POINTS)})")


def quantizer_groups(model, setup: str = DEFAULT_SETUP) -> dict[str, list[str]]:
    """{group: the names of its quantizers} for `model` under `setup` (empty groups left out)."""
    point_group = {p: g for g, points in GROUPS.items() for p in points}
    out: dict[str, list[str]] = {}
    for name in quantizer_names(model, setup):
        out.setdefault(point_group[quantizer_point(name)], []).append(name)
    return out


def set_enabled(q: nn.Module, enabled, setup: str = DEFAULT_SETUP) -> None:
    """Switch the activation quantizers of a quantized model on or off: `enabled` is a set of
    quantizer names (on), the rest pass their input through; the weights stay quantized."""
    for name, m in _quantizers(q, setup).items():
        m.enabled = name in enabled


def group_gaps(model, calib_batches: list, eval_x: torch.Tensor, eval_y: torch.Tensor,
               settings=GROUP_SETTINGS, fp_loss: float | None = None, progress=None,
               **qkw) -> list[dict]:
    """For each setting and each group of activation quantizers: the gap to full precision
    with only that group's activations quantized ('only') and with every group's but that one
    ('all but'); and per setting the gap with every group ('all', the setting's own gap) and
    with none ('none': the weights' own gap, 0 when they keep 16 bits). Weights are quantized
    at the setting's width in every mode. One calibration serves every setting."""
    fp_loss, ranges, configs = _calibrated(model, calib_batches, eval_x, eval_y, settings,
                                           fp_loss, qkw)
    rows = []
    for qc in configs:
        wb, ab = qc.wbits, qc.abits
        q = quantize_model(model, qc, ranges=ranges)
        groups = quantizer_groups(q, qc.setup)
        every = [n for names in groups.values() for n in names]
        cases = [("all", None, every), ("none", None, [])]
        cases += [(mode, g, names if mode == "only" else [n for n in every if n not in names])
                  for g, names in groups.items() for mode in ("only", "all but")]
        for mode, group, on in cases:
            set_enabled(q, set(on), qc.setup)
            loss = loss_on(q, eval_x, eval_y)
            rows.append({"setting": qc.name, "wbits": wb, "abits": ab, "group": group or "",
                         "mode": mode, "quantizers": len(on), "loss": loss,
                         "fp_loss": fp_loss, "gap": loss - fp_loss})
            if progress is not None:
                progress.update(1)
    return rows


def group_cases(model, settings=GROUP_SETTINGS, setup: str = DEFAULT_SETUP) -> int:
    """How many quantized evaluations group_gaps runs (for a progress bar)."""
    return len(settings) * (2 + 2 * len(quantizer_groups(model, setup)))
