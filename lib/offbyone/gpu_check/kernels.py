"""The CUDA kernels against float64: every fused route of softmax1 and the sink, values and
gradients, beside fused softmax's own error through the same kernel; and the CUDA tests."""
from __future__ import annotations

import math
import subprocess
import sys
import time
from pathlib import Path

import torch

from ..attention import reference_attention

CHECK_KERNELS = (("cuda_efficient", torch.float32), ("cuda_flash", torch.bfloat16),
                 ("cuda_flash", torch.float16))
# cuDNN's route is opt-in (OFFBYONE_SINK_CUDNN=1) until this table has checked it on a GPU: its
# rows are recorded, an error among them included, but the CUDA tests do not run it
CHECK_OPTIONAL_KERNELS = (("cuda_cudnn", torch.bfloat16), ("cuda_cudnn", torch.float16))
CHECK_HEAD_SIZES = (64, 128)
CHECK_T = (1, 7, 64, 1000, 4096)
# The largest error allowed, relative to the largest magnitude of the float64 reference, for
# values and gradients. Inputs are rounded to the kernel's dtype before the reference sees them,
# so what remains is the kernel's own arithmetic and its output rounding (bf16 keeps 8 bits,
# fp16 11, so a few units of 2^-8 and 2^-11; fp32 accumulates over T keys).
REL_TOL = {torch.float32: 1e-4, torch.bfloat16: 3e-2, torch.float16: 5e-3}


# --------------------------------------------------------------------------------------------
# 1. The CUDA kernels against float64

def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    """max |x - ref| / max |ref| (0 when both vanish)."""
    scale = ref.abs().max().item()
    diff = (x.double() - ref).abs().max().item()
    return diff / scale if scale > 0 else diff


def kernel_errors(kernel: str, dtype: torch.dtype, D: int, T: int, variant: str,
                  B: int = 2, H: int = 4, seed: int = 0, device: str = "cuda") -> dict:
    """Errors of the sink fast path through one fused kernel against the float64 reference
    (values, dq, dk, dv and, for the learned sink, ds), beside the errors of fused softmax
    through the same kernel against its own float64 reference."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from ..attention import sink_fused   # looked up at call time: tests replace it

    g = torch.Generator(device="cpu").manual_seed(seed)
    q, k, v, grad = (torch.randn(B, H, T, D, generator=g).to(device, dtype) for _ in range(4))
    s = torch.randn(H, generator=g).to(device) if variant == "sink" else torch.zeros(H, device=device)
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    s_leaf = s.clone().requires_grad_(variant == "sink")
    ref_leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    s_ref = s.detach().double().requires_grad_(variant == "sink")
    scale = 1.0 / math.sqrt(D)

    # softmax1 as the fast path runs it: no sink tensor
    out = sink_fused(*leaves, s_leaf if variant == "sink" else None, True, scale, kernel)
    ref, _ = reference_attention(*ref_leaves, "sink", s_ref, causal=True, scale=scale)
    wrt = leaves + ([s_leaf] if variant == "sink" else [])
    wrt_ref = ref_leaves + ([s_ref] if variant == "sink" else [])
    grads = torch.autograd.grad(out, wrt, grad)
    grads_ref = torch.autograd.grad(ref, wrt_ref, grad.double())
    names = ["out", "dq", "dk", "dv"] + (["ds"] if variant == "sink" else [])
    errors = dict(zip(names, [rel_err(out, ref)] + [rel_err(a, b) for a, b in zip(grads, grads_ref)]))

    backend = {"cuda_efficient": SDPBackend.EFFICIENT_ATTENTION,
               "cuda_cudnn": SDPBackend.CUDNN_ATTENTION}.get(kernel, SDPBackend.FLASH_ATTENTION)
    sm_leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    sm_ref_leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    with sdpa_kernel(backend):
        sm = torch.nn.functional.scaled_dot_product_attention(*sm_leaves, is_causal=True, scale=scale)
    sm_ref, _ = reference_attention(*sm_ref_leaves, "softmax", causal=True, scale=scale)
    sm_grads = torch.autograd.grad(sm, sm_leaves, grad)
    sm_grads_ref = torch.autograd.grad(sm_ref, sm_ref_leaves, grad.double())
    softmax_err = max([rel_err(sm, sm_ref)] + [rel_err(a, b) for a, b in zip(sm_grads, sm_grads_ref)])
    return {"kernel": kernel, "dtype": str(dtype).replace("torch.", ""), "D": D, "T": T,
            "variant": variant, **{f"err_{n}": e for n, e in errors.items()},
            "max_err": max(errors.values()), "softmax_kernel_max_err": softmax_err,
            "tolerance": REL_TOL[dtype], "ok": max(errors.values()) <= REL_TOL[dtype]}


def kernel_error_table(Ts=CHECK_T, head_sizes=CHECK_HEAD_SIZES, kernels=CHECK_KERNELS,
                       optional=CHECK_OPTIONAL_KERNELS) -> list[dict]:
    rows = []
    for kernel, dtype in tuple(kernels) + tuple(optional):
        for D in head_sizes:
            for T in Ts:
                for variant in ("softmax1", "sink"):
                    try:
                        rows.append(kernel_errors(kernel, dtype, D, T, variant))
                    except RuntimeError as e:
                        if (kernel, dtype) not in optional:
                            raise
                        rows.append({"kernel": kernel, "dtype": str(dtype).replace("torch.", ""),
                                     "D": D, "T": T, "variant": variant, "ok": False,
                                     "error": str(e).strip().splitlines()[0][:300]})
                    rows[-1]["optional"] = (kernel, dtype) in optional
                    torch.cuda.empty_cache()
    return rows


def run_cuda_tests(root: Path) -> dict:
    """The CUDA tests through pytest, in a child process; their outcome and output tail."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
           "tests/test_cuda.py", "tests/test_attention.py", "-k", "cuda"]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
    tail = (res.stdout + res.stderr).strip().splitlines()
    return {"command": " ".join(cmd), "returncode": res.returncode, "passed": res.returncode == 0,
            "summary": tail[-1] if tail else "", "output_tail": "\n".join(tail[-40:]),
            "wall_s": time.perf_counter() - t0}
