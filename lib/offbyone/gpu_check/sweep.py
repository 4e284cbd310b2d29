"""The kernel sweep: softmax1 and the sink on every fused route against the fastest of SDPA's
softmax backends, time and peak memory, per head size and T."""
from __future__ import annotations

import math
import time

import torch

from ..attention import fused_kernel_for
from ..bench import _quartiles, _sync


# --------------------------------------------------------------------------------------------
# 2b. The kernel sweep: softmax1 and the sink on every fused route against the fastest softmax

SWEEP_T = (256, 1024, 4096, 16384)
SWEEP_HEAD_SIZES = (64, 128)
SWEEP_REPEATS = 20
SWEEP_BUDGET_S = 90.0
# the sink path's routes (FUSED_KERNELS) on each device; cuDNN's is opt-in for training until
# this sweep and the kernel-error table have checked it on a GPU
SWEEP_ROUTES = {"cuda": ("cuda_cudnn", "cuda_flash", "cuda_efficient"), "cpu": ("cpu_flash",)}
SOFTMAX_BACKENDS = {"cuda": ("CUDNN_ATTENTION", "FLASH_ATTENTION", "EFFICIENT_ATTENTION"),
                    "cpu": ("FLASH_ATTENTION",)}


def _sweep_cases(device: str) -> list[tuple[str, str]]:
    """(variant, route): softmax through each SDPA backend, softmax1 and the sink through each
    fused kernel."""
    return ([("softmax", b) for b in SOFTMAX_BACKENDS[device]]
            + [(v, r) for v in ("softmax1", "sink") for r in SWEEP_ROUTES[device]])


def _sweep_pass(variant: str, route: str, t: dict):
    """One forward + backward of a case on its inputs `t` (gradients cleared afterwards)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from ..attention import sink_fused   # looked up at call time: tests replace it
    if variant == "softmax":
        with sdpa_kernel(getattr(SDPBackend, route)):
            out = torch.nn.functional.scaled_dot_product_attention(
                t["q"], t["k"], t["v"], is_causal=True, scale=t["scale"])
    else:
        out = sink_fused(t["q"], t["k"], t["v"], t["s"] if variant == "sink" else None, True,
                         t["scale"], route)
    out.backward(t["grad"])
    for x in (t["q"], t["k"], t["v"], t["s"]):
        x.grad = None


def kernel_sweep(Ts=SWEEP_T, head_sizes=SWEEP_HEAD_SIZES, B: int = 8, H: int = 8,
                 repeats: int = SWEEP_REPEATS, device: str = "cuda",
                 dtype: torch.dtype = torch.bfloat16, budget_s: float = SWEEP_BUDGET_S) -> dict:
    """Forward + backward time (median of `repeats` rounds after three warm-up rounds, the cases
    interleaved and rotated round by round) and peak memory (CUDA: the allocator's peak above
    the inputs, one more pass) of every case in `_sweep_cases`, causal, at each head size and T.
    A case that cannot run says why. Then, per D and T, the fastest softmax, the fastest route of
    softmax1 and of the sink, and the route the fast path takes by default (`fused_kernel_for`),
    with their time and memory ratios to that softmax. Cases left when `budget_s` is spent are
    skipped, and say so."""
    t0 = time.perf_counter()
    dev, cuda = torch.device(device), device == "cuda"
    rows, summary = [], []
    for D in head_sizes:
        for T in Ts:
            g = torch.Generator(device="cpu").manual_seed(0)
            t = {n: torch.randn(B, H, T, D, generator=g).to(device, dtype) for n in ("q", "k", "v", "grad")}
            for n in ("q", "k", "v"):
                t[n].requires_grad_()
            t["s"] = torch.zeros(H, device=device, requires_grad=True)
            t["scale"] = 1.0 / math.sqrt(D)
            default = fused_kernel_for(t["q"], t["k"], t["v"], True)
            here = {}
            for variant, route in _sweep_cases(device):
                row = {"variant": variant, "route": route, "D": D, "T": T, "B": B, "H": H,
                       "dtype": str(dtype).replace("torch.", ""), "device": device}
                if time.perf_counter() - t0 > budget_s:
                    row["skipped"] = f"the sweep's {budget_s:.0f} s were spent"
                else:
                    try:
                        _sweep_pass(variant, route, t)
                        here[(variant, route)] = row
                    except RuntimeError as e:  # this backend cannot run these inputs
                        row["skipped"] = str(e).strip().splitlines()[0][:200]
                rows.append(row)
            times = {c: [] for c in here}
            cases = list(here)
            for i in range(3 + repeats if cases else 0):
                for c in cases[i % len(cases):] + cases[:i % len(cases)]:
                    _sync(dev)
                    s0 = time.perf_counter()
                    _sweep_pass(*c, t)
                    _sync(dev)
                    if i >= 3:
                        times[c].append(time.perf_counter() - s0)
            for c, row in here.items():
                q1, med, q3 = _quartiles(times[c])
                row.update(median_ms=1e3 * med, q1_ms=1e3 * q1, q3_ms=1e3 * q3,
                           repeats=len(times[c]), peak_mib=_sweep_peak_mib(*c, t) if cuda else None)
            summary += _sweep_summary(here, D, T, default)
            del t
            if cuda:
                torch.cuda.empty_cache()
    return {"rows": rows, "summary": summary, "repeats": repeats, "B": B, "H": H,
            "dtype": str(dtype).replace("torch.", ""), "device": device,
            "wall_s": time.perf_counter() - t0}


def _sweep_peak_mib(variant: str, route: str, t: dict) -> float:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    _sweep_pass(variant, route, t)
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def _sweep_summary(here: dict, D: int, T: int, default: str | None) -> list[dict]:
    """Per variant: its fastest route and its default route against the fastest softmax."""
    soft = [r for (v, _), r in here.items() if v == "softmax"]
    if not soft:
        return []
    best = min(soft, key=lambda r: r["median_ms"])
    out = []
    for variant in ("softmax1", "sink"):
        mine = {route: r for (v, route), r in here.items() if v == variant}
        if not mine:
            continue
        fastest = min(mine.values(), key=lambda r: r["median_ms"])
        row = {"variant": variant, "D": D, "T": T, "softmax_backend": best["route"],
               "softmax_ms": best["median_ms"], "fastest_route": fastest["route"],
               "time_ratio": fastest["median_ms"] / best["median_ms"],
               "default_route": default,
               "default_time_ratio": (mine[default]["median_ms"] / best["median_ms"]
                                      if default in mine else None)}
        if best.get("peak_mib"):
            row["memory_ratio"] = fastest["peak_mib"] / best["peak_mib"]
        out.append(row)
    return out
