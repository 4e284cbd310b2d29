"""A GPU in ten minutes: is the gpu profile safe to run here, and how long will it take?

    python -m offbyone.gpu_check          # make gpu-check; writes results/gpu/check.json

On a CUDA machine it
1. runs the CUDA tests (tests/test_cuda.py and the CUDA tests of tests/test_attention.py): the
   softmax1 and sink fast paths against the float64 reference, values and gradients, through
   the memory-efficient kernel in fp32 and the flash kernel in bf16 and fp16, at head sizes 64
   and 128 and T in {1, 7, 64, 1000, 4096}; and records every case's error beside fused
   softmax's error through the same kernel;
   (cuDNN's route, opt-in so far, is recorded too, errors included);
2. benchmarks attention forward + backward in bf16 from T = 1k to 16k (softmax, softmax1, sink:
   time and peak-memory ratios, peak from torch.cuda.max_memory_allocated), then sweeps the
   sink path's routes (the lse correction on cuDNN, flash and memory-efficient) against the
   fastest of SDPA's softmax backends, bf16, D 64 and 128, T = 256 to 16k, 20 timed rounds
   each, in at most 90 seconds (`kernel_sweep`);
3. trains the gpu profile's runs with the pipeline's own `train()` for a few hundred steps:
   softmax and softmax1 with torch.compile off and on, the other variants and the testbed's
   model eagerly (the main pair also compiled with CUDA graphs, `compile_mode:
   reduce-overhead`); measures one checkpoint of each with the pipeline's own `measure()`; and
   times the profile's seeds trained as one ensemble (`offbyone.ensemble`);
4. estimates the wall time of `make reproduce PROFILE=<profile>` (the notebooks) and of
   `python -m offbyone.study run <profile>` (one process per stage, with and without
   ensembles), stage by stage, from those rates and the profile's run list (`estimate`,
   `study_estimate`), beside the written FLOP count (`flop_budget`);
5. writes it all to results/gpu/check.json with provenance and prints a summary.

Without CUDA it exits with status 2 and says so. `--cpu-rehearsal` runs steps 2 to 5 on the CPU
at toy sizes (the tests use it); its numbers mean nothing.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

NO_CUDA_EXIT = 2
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
# Named assumptions of the wall-time estimate (measured where the check can measure them)
# preparing a streamed corpus (download, BPE training on at most 50M characters, encoding): half
# the rate of the 2-core pilot in ../shared/PILOTS.md (40M tokens in 47 s), for the download
ASSUMED_PREP_TOKENS_PER_S = 0.5e6
ASSUMED_REPORT_S = 120.0      # report and bench notebooks, the LaTeX build (CPU-bound)
PAPERMILL_EXTRA_S = 3.0       # papermill's kernel start beyond a bare `import torch` process
PEAK_BF16_FLOPS = 989e12      # H100/H200 SXM dense bf16, by NVIDIA's datasheet
GPU_JOBS = 4                  # runs at once under `make reproduce` on a GPU (the Makefile's JOBS)
# generating the Bigram-Backcopy corpus on the node's CPU: 32M tokens took 10 s on a loaded
# 2-core machine here (2026-12-02); assumed no faster there
ASSUMED_SYNTH_TOKENS_PER_S = 3e6
# 2 (2026-12-02): the profile `gpu` is the Bigram-Backcopy study run by offbyone.study; in
# checks made before, `gpu` named the FineWeb profile, now `gpu_fineweb`
PROFILES_VERSION = 2
RENAMED_IN_V2 = {"gpu": "gpu_fineweb"}


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

    from .attention import reference_attention, sink_fused

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

    from .attention import sink_fused
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
    from .attention import fused_kernel_for
    from .bench import _quartiles, _sync
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


# --------------------------------------------------------------------------------------------
# 3. Training and measurement through the pipeline's own code

def train_rate(profile: str, variant: str, steps: int, compile: bool, work: Path,
               measure_it: bool = False, overrides: dict | None = None) -> dict:
    """Train `steps` steps of one run of `profile` (its recipe and model) with `train()` in a
    scratch folder; tokens/s over the last quarter of the steps (after compilation and warm-up),
    and optionally the wall time of `measure()` on the final checkpoint."""
    from .measure import MeasureConfig, measure
    from .pipeline import load_profile, run_config
    from .train import train

    prof = load_profile(profile)
    quarter = max(1, steps // 4)
    mode = (overrides or {}).get("compile_mode", "default")
    out_dir = work / f"{profile}-{variant}-{mode + '-compiled' if compile else 'eager'}"
    ovr = {"max_steps": steps, "warmup_steps": min(steps, 10), "log_interval": quarter,
           "eval_interval": steps, "checkpoint_fractions": [0.5, 1.0] if measure_it else [1.0],
           "compile": compile, "progress": False, **(overrides or {})}
    cfg = run_config(profile, prof["variants"][0], 0, ovr)
    cfg.attention, cfg.out_dir = variant, str(out_dir)
    cfg.validate()
    t0 = time.perf_counter()
    summary = train(cfg)
    row = {"profile": profile, "variant": variant, "compile": compile, "steps": steps,
           "tokens_per_step": cfg.batch_size * cfg.block_size,
           "tokens_per_s": summary["tokens_per_s"], "train_elapsed_s": summary["train_elapsed_s"],
           "wall_s": time.perf_counter() - t0, "n_params": summary["n_params"],
           "val_loss": summary["val_loss"]}
    if measure_it:
        mc = MeasureConfig.from_dict(prof["measure"])
        try:  # a middle checkpoint (no sliding-window grid), then the final one
            from .train import list_checkpoints
            for key, ckpt in (("measure_mid_s", list_checkpoints(out_dir)[0]),
                              ("measure_final_s", summary["final_checkpoint"])):
                t1 = time.perf_counter()
                measure(ckpt, mc, verbose=False)
                row[key] = time.perf_counter() - t1
        except Exception as e:  # a failure is a finding: record it and go on with the check
            import traceback
            row["measure_error"] = "".join(traceback.format_exception(e)[-6:])
            print(f"    measure() FAILED: {e!r}", flush=True)
    return row


def ensemble_rate(profile: str, variant: str, size: int, steps: int, work: Path,
                  overrides: dict | None = None) -> dict:
    """The step time of `size` seeds of a profile's run trained as one ensemble
    (offbyone.ensemble): the lever for launch-bound models that `study run --ensemble` uses."""
    from .ensemble import train_ensemble
    from .pipeline import run_config

    ovr = {"max_steps": steps, "warmup_steps": min(steps, 10), "log_interval": max(1, steps // 4),
           "eval_interval": steps, "checkpoint_fractions": [1.0], "progress": False,
           **(overrides or {})}
    cfgs = []
    for seed in range(size):
        cfg = run_config(profile, variant, seed, ovr)
        cfg.out_dir = str(work / f"ens-{profile}-{variant}-{size}-s{seed}")
        cfgs.append(cfg)
    t0 = time.perf_counter()
    out = train_ensemble(cfgs)
    step_s = sum(o["train_elapsed_s"] for o in out) / steps        # members' shares, summed
    return {"profile": profile, "variant": variant, "ensemble_of": size, "steps": steps,
            "step_s": step_s, "wall_s": time.perf_counter() - t0,
            "tokens_per_s": size * cfgs[0].batch_size * cfgs[0].block_size / step_s}


def vocab_guess(cfg) -> int:
    """A run's vocabulary without preparing its corpus: the BPE size plus BOS, or 256 for
    characters, or the synthetic testbed's own (64 tokens and BOS): enough for a shape or a FLOP
    count."""
    if cfg.corpus == "bigram_backcopy":
        return 65
    return cfg.bpe_vocab_size + 1 if cfg.tokenizer == "bpe" else 256


def graph_breaks(profile: str, variant: str, device: str = "cuda") -> dict:
    """torch._dynamo.explain on one forward + loss of the profile's model with `variant`."""
    from .model import GPT
    from .pipeline import load_profile, run_config

    cfg = run_config(profile, load_profile(profile)["variants"][0], 0)
    cfg.attention = variant
    cfg.validate()
    vocab = vocab_guess(cfg)
    model = GPT(cfg.model_config(vocab)).to(device)
    x = torch.randint(0, vocab, (2, cfg.block_size), device=device)
    torch._dynamo.reset()
    with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
        ex = torch._dynamo.explain(model)(x, x)
    torch._dynamo.reset()
    return {"graphs": ex.graph_count, "graph_breaks": ex.graph_break_count,
            "reasons": [str(r.reason) for r in ex.break_reasons][:5]}


def parallel_speedup(profile: str, steps: int, jobs: int, work: Path,
                     overrides: dict | None = None) -> dict:
    """How much `make -j<jobs>` gains on this machine for a profile's runs: the wall time of one
    training process (`python -m offbyone.train`, start-up included) against `jobs` of them at
    once, speedup = jobs x wall(1) / wall(jobs). Small models are bound by per-step overhead,
    which several processes share out over the CPU cores and the GPU's idle time."""
    import yaml

    from .pipeline import load_profile, run_config

    prof = load_profile(profile)

    def launch(tag: str, n: int) -> float:
        procs = []
        t0 = time.perf_counter()
        for i in range(n):
            cfg = run_config(profile, prof["variants"][0], i, {
                "max_steps": steps, "warmup_steps": min(steps, 10), "eval_interval": steps,
                "log_interval": max(1, steps // 4), "checkpoint_fractions": [1.0],
                "progress": False, **(overrides or {})})
            cfg.out_dir = str(work / f"par-{profile}-{tag}-{i}")
            path = work / f"par-{profile}-{tag}-{i}.yaml"
            path.write_text(yaml.safe_dump(json.loads(json.dumps(cfg.to_dict()))))
            procs.append(subprocess.Popen([sys.executable, "-m", "offbyone.train", "--config",
                                           str(path)], stdout=subprocess.DEVNULL,
                                          stderr=subprocess.PIPE, text=True))
        for p in procs:
            _, err = p.communicate()
            if p.returncode != 0:
                raise RuntimeError(f"a parallel training process failed:\n{err[-2000:]}")
        return time.perf_counter() - t0

    one = launch("one", 1)
    many = launch("many", jobs)
    return {"profile": profile, "steps": steps, "jobs": jobs, "wall_one_s": one,
            "wall_jobs_s": many, "speedup": jobs * one / many}


def process_start_s() -> float:
    """Seconds to start a Python process that imports the package and initialises the device."""
    code = ("import torch, offbyone.train, offbyone.measure; "
            "torch.zeros(1, device='cuda' if torch.cuda.is_available() else 'cpu')")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    return time.perf_counter() - t0


def notebook_overhead_s(profile: str = "gpu") -> dict:
    """The fixed cost of one pipeline notebook: the `offbyone.pipeline nb` process that drives
    papermill, plus the kernel's start-up with the package imported and the device initialised.
    Where papermill is installed, a trivial notebook is run through it; else papermill's own
    share is the assumed PAPERMILL_EXTRA_S."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "offbyone.pipeline", "check", profile], check=True,
                   capture_output=True)
    cli = time.perf_counter() - t0
    try:
        import nbformat
        import papermill as pm
    except ImportError:
        kernel, how = process_start_s() + PAPERMILL_EXTRA_S, "assumed papermill share"
    else:
        with tempfile.TemporaryDirectory() as d:
            nb = nbformat.v4.new_notebook()
            nb.cells = [nbformat.v4.new_code_cell(
                "import torch, offbyone.train, offbyone.measure\n"
                "torch.zeros(1, device='cuda' if torch.cuda.is_available() else 'cpu')")]
            nbformat.write(nb, f"{d}/in.ipynb")
            t0 = time.perf_counter()
            pm.execute_notebook(f"{d}/in.ipynb", f"{d}/out.ipynb", kernel_name="python3",
                                progress_bar=False)
            kernel, how = time.perf_counter() - t0, "measured through papermill"
    return {"seconds": cli + kernel, "cli_s": cli, "kernel_s": kernel, "how": how}


# --------------------------------------------------------------------------------------------
# 4. The budget: a written FLOP count, and the estimate from measured rates

def flops_per_token(n_params: int, n_layer: int, n_embd: int, block_size: int) -> float:
    """Training FLOPs per token (forward + backward), as nanoGPT's estimate_mfu counts them:
    6 N for the weights (N without the position embedding) plus 12 L C T for attention's
    scores and weighted sum (the PaLM appendix B count)."""
    return 6.0 * n_params + 12.0 * n_layer * n_embd * block_size


def flop_budget(profile: str, peak_flops: float, utilisation: float, step_overhead_s: float,
                n_params: dict | None = None) -> dict:
    """The written count for a profile and its companions: per profile, tokens = runs x steps x
    batch x context, FLOPs = tokens x flops_per_token, and the time is the larger of the compute
    time FLOPs / (peak x utilisation) and runs x steps x per-step overhead (a step cannot be
    quicker than launching it: small models are bound by that, large ones by FLOPs).
    `n_params` maps a profile to its model's parameter count (else it is counted from the
    config with the guessed vocabulary)."""
    from .model import GPT
    from .pipeline import load_profile, run_config

    main = load_profile(profile)
    rows = []
    for name in [profile] + [p for p in [main.get("testbed")] + (main.get("ablations") or []) if p]:
        prof = load_profile(name)
        cfg = run_config(name, prof["variants"][0], prof["seeds"][0])
        if n_params and name in n_params:
            n = n_params[name]
        else:
            with torch.device("meta"):
                n = GPT(cfg.model_config(vocab_guess(cfg))).num_params()
        n_runs = len(prof["variants"]) * len(prof["seeds"])
        tokens = n_runs * cfg.max_steps * cfg.batch_size * cfg.block_size
        fpt = flops_per_token(n, cfg.n_layer, cfg.n_embd, cfg.block_size)
        compute_s = tokens * fpt / (peak_flops * utilisation)
        overhead_s = n_runs * cfg.max_steps * step_overhead_s
        rows.append({"profile": name, "runs": n_runs, "steps": cfg.max_steps,
                     "tokens": tokens, "n_params": n, "flops_per_token": fpt,
                     "flops": tokens * fpt, "compute_s": compute_s, "overhead_s": overhead_s,
                     "train_s": max(compute_s, overhead_s)})
    return {"peak_flops": peak_flops, "utilisation": utilisation,
            "step_overhead_s": step_overhead_s, "profiles": rows,
            "train_s": sum(r["train_s"] for r in rows)}


def softmax_row(rows: list[dict], profile: str | None, compiled: bool = False) -> dict | None:
    """A check's training row of the softmax run of `profile` (compiled or not, if both)."""
    cand = [r for r in rows if r["profile"] == profile and r["variant"] == "softmax"]
    return next((r for r in cand if r["compile"] == compiled), cand[0] if cand else None)


def model_sizes(rows: list[dict], profile: str) -> dict:
    """{profile: parameter count of its softmax model} for the profile, its testbed and its
    ablations (which share the main model), from a check's training rows."""
    from .pipeline import load_profile

    main = load_profile(profile)
    sizes = {}
    for name, of in [(profile, profile), (main.get("testbed"), main.get("testbed"))] + [
            (a, profile) for a in main.get("ablations") or []]:
        row = softmax_row(rows, of)
        if name and row:
            sizes[name] = row["n_params"]
    return sizes


def measured_flop_budget(profile: str, rows: list[dict], compiled: bool,
                         peak_flops: float) -> dict:
    """flop_budget with the utilisation of the main profile's softmax run and the testbed's
    per-step time (its small model is bound by per-step overhead, not FLOPs) as measured."""
    from .pipeline import load_profile

    main = softmax_row(rows, profile, compiled)
    testbed = softmax_row(rows, load_profile(profile).get("testbed"), compiled)
    cfg = load_profile(profile)["train"]
    fpt = flops_per_token(main["n_params"], cfg["n_layer"], cfg["n_embd"], cfg["block_size"])
    utilisation = main["tokens_per_s"] * fpt / peak_flops
    overhead = testbed["tokens_per_step"] / testbed["tokens_per_s"] if testbed else 0.0
    budget = flop_budget(profile, peak_flops, utilisation, overhead, model_sizes(rows, profile))
    budget["note"] = ("utilisation: the main profile's softmax run; per-step overhead: the "
                      "testbed's whole step time (its model is too small to be bound by FLOPs)")
    return budget


def estimate(profile: str, rates: dict, measure_s: dict, notebook_s: float,
             bench_s: float, data_s: float | None = None,
             report_s: float = ASSUMED_REPORT_S, speedup: dict | None = None,
             jobs: int = 1) -> dict:
    """Wall time of `make reproduce PROFILE=<profile> JOBS=<jobs>`, stage by stage, in seconds.

    rates: {(profile, variant): tokens/s} (an ablation runs at its main profile's rates);
    measure_s: {profile: (seconds for a middle checkpoint, for the final one)}; notebook_s: the
    fixed cost of one notebook; speedup: {profile: the measured gain of running `jobs` runs at
    once}, which divides that profile's training and measurement (1 without it). Training adds
    the evaluation passes at the forward share of a step (one third)."""
    from .pipeline import load_profile, run_config

    main = load_profile(profile)
    ablations = main.get("ablations") or []
    companions = [p for p in [main.get("testbed")] + ablations if p]
    if data_s is None:
        data_s = data_prep_s(profile)
    stages = {"data": data_s, "train": 0.0, "measure": 0.0, "bench": bench_s, "report": report_s}
    per_profile = []
    for name in [profile] + companions:
        prof = load_profile(name)
        rate_of = profile if name in ablations else name
        gain = (speedup or {}).get(rate_of, 1.0) if jobs > 1 else 1.0
        mid_s, final_s = measure_s[rate_of]
        train_s = measure_total = 0.0
        for variant in prof["variants"]:
            key = (rate_of, variant)
            if key not in rates:
                raise KeyError(f"no measured rate for {key}; measured: {sorted(rates)}")
            cfg = run_config(name, variant, prof["seeds"][0])
            tokens = cfg.max_steps * cfg.batch_size * cfg.block_size
            n_evals = cfg.max_steps // cfg.eval_interval + 1
            eval_tokens = n_evals * cfg.eval_batches * cfg.batch_size * cfg.block_size
            n_ckpt = len(cfg.checkpoint_steps())
            train_s += ((tokens + eval_tokens / 3) / rates[key] + notebook_s) * len(prof["seeds"])
            measure_total += ((n_ckpt - 1) * mid_s + final_s + notebook_s) * len(prof["seeds"])
        per_profile.append({"profile": name, "runs": len(prof["variants"]) * len(prof["seeds"]),
                            "speedup": gain, "train_s": train_s / gain,
                            "measure_s": measure_total / gain})
        stages["train"] += train_s / gain
        stages["measure"] += measure_total / gain
    return {"profile": profile, "jobs": jobs, "stages_s": stages, "total_s": sum(stages.values()),
            "per_profile": per_profile,
            "assumptions": {"data_s": data_s, "report_s": report_s, "notebook_s": notebook_s,
                            "measurement gains from parallel runs as training does": True}}


def data_prep_s(profile: str) -> float:
    """Assumed seconds to prepare a profile's corpus: its training tokens (the max_tokens cap,
    and the held-out 10/90 beside) at ASSUMED_PREP_TOKENS_PER_S; the synthetic testbed and an
    uncapped corpus (Shakespeare: a few million tokens) count as a minute."""
    from .pipeline import load_profile
    cap = load_profile(profile)["train"].get("max_tokens", 0)
    return cap / 0.9 / ASSUMED_PREP_TOKENS_PER_S if cap else 60.0


def normalized(check: dict) -> dict:
    """A check with its profile names as they are now (checks made before PROFILES_VERSION 2
    timed the FineWeb profile under the name `gpu`)."""
    if check.get("profiles_version", 1) >= PROFILES_VERSION:
        return check
    rn = lambda name: RENAMED_IN_V2.get(name, name)  # noqa: E731
    out = dict(check, profile=rn(check["profile"]), profiles_version=PROFILES_VERSION)
    out["training"] = [dict(r, profile=rn(r["profile"])) for r in check.get("training") or []]
    out["parallel"] = [dict(r, profile=rn(r["profile"])) for r in check.get("parallel") or []]
    if check.get("flop_budget"):
        fb = check["flop_budget"]
        out["flop_budget"] = dict(fb, profiles=[dict(r, profile=rn(r["profile"]))
                                                for r in fb.get("profiles", [])])
    return out


def study_estimate(check: dict, profile: str = "gpu", jobs: int | None = None,
                   ensemble: int = 1) -> dict:
    """Wall time of `python -m offbyone.study run <profile> --jobs <jobs>` on the node (no
    notebooks; the report and the paper are built afterwards on any CPU), from a check.

    Per run: steps x the step time, plus the evaluations at a third of a step each, plus the
    measurement of its checkpoints. The step time is measured where the check trained this
    profile's model (tokens per step / tokens/s); else it is extrapolated and says so: the
    larger of the compute time at the check's measured utilisation and the check's measured
    per-step overhead (its small testbed model's whole step) scaled by the number of layers.
    Runs at once divide by the speedup the check measured for this profile, else for its
    smallest (launch-bound) model at the same number of jobs, else by 1.

    With `ensemble` E > 1 (`offbyone.study run --ensemble E`) each variant's seeds train in
    groups of up to E that share one step: measured where the check timed such an ensemble
    (`ensemble` rows), else E times the compute against one step's launch overhead."""
    from .model import GPT
    from .pipeline import load_profile, run_config
    from .study import study_runs

    check = normalized(check)
    rows, fb = check["training"], check["flop_budget"]
    jobs = jobs or check.get("jobs", 1)
    train = load_profile(profile)["train"]
    want = (bool(train.get("compile")), train.get("compile_mode", "default") if train.get("compile") else "default")
    measured = {(r["profile"], r["variant"]): r for r in rows
                if (bool(r["compile"]), r.get("compile_mode", "default")) == want}
    ref_testbed = load_profile(check["profile"]).get("testbed")
    ref_layers = 1
    if ref_testbed:
        tb = load_profile(ref_testbed)
        ref_layers = run_config(ref_testbed, tb["variants"][0], tb["seeds"][0]).n_layer
    mids = {r["profile"]: (r["measure_mid_s"], r["measure_final_s"]) for r in rows
            if "measure_final_s" in r}
    notes, per_run, data_s, seen = [], [], 0.0, set()
    for name, variant, seed in study_runs(profile):
        cfg = run_config(name, variant, seed)
        base = profile if name != profile and name in (load_profile(profile).get("ablations") or []) else name
        tps = cfg.batch_size * cfg.block_size
        row = measured.get((base, variant)) or measured.get((base, "softmax"))
        if row:
            step_s, how = tps / row["tokens_per_s"], "measured"
        else:
            with torch.device("meta"):
                n = GPT(cfg.model_config(vocab_guess(cfg))).num_params()
            fpt = flops_per_token(n, cfg.n_layer, cfg.n_embd, cfg.block_size)
            compute = tps * fpt / (fb["peak_flops"] * fb["utilisation"])
            overhead = fb["step_overhead_s"] * cfg.n_layer / ref_layers
            step_s, how = max(compute, overhead), "extrapolated"
            note = (f"{base}: step time extrapolated, max(compute {1e3 * compute:.1f} ms at "
                    f"utilisation {fb['utilisation']:.3f}, overhead {1e3 * overhead:.1f} ms = "
                    f"{1e3 * fb['step_overhead_s']:.1f} ms x {cfg.n_layer}/{ref_layers} layers)")
            if note not in notes:
                notes.append(note)
        evals = (cfg.max_steps // cfg.eval_interval + 1) * cfg.eval_batches
        mid, final = mids.get(base) or mids.get(check["profile"], (3.0, 5.0))
        if base not in mids and f"{base}: measurement" not in seen:
            seen.add(f"{base}: measurement")
            notes.append(f"{base}: measurement time of {check['profile']}'s larger model "
                         f"({mid:.1f} s a middle, {final:.1f} s the final checkpoint)")
        n_ckpt = len(cfg.checkpoint_steps())
        per_run.append({"run": f"{name}/{variant}-s{seed}", "step_s": step_s, "how": how,
                        "train_s": (cfg.max_steps + evals / 3) * step_s,
                        "measure_s": (n_ckpt - 1) * mid + final})
        if cfg.corpus == "bigram_backcopy" and (cfg.corpus, cfg.max_tokens) not in seen:
            seen.add((cfg.corpus, cfg.max_tokens))
            data_s += (cfg.max_tokens or 2_000_000) / ASSUMED_SYNTH_TOKENS_PER_S
    if ensemble > 1:
        from .ensemble import ensemble_groups
        ens_rows = {(r["profile"], r["variant"], r["ensemble_of"]): r
                    for r in check.get("ensemble") or []}
        by_run = {r["run"]: r for r in per_run}
        for group in ensemble_groups(study_runs(profile), ensemble):
            rows_g = [by_run[f"{n}/{v}-s{s}"] for n, v, s in group]
            E, (n0, v0, _) = len(rows_g), group[0]
            base = profile if n0 != profile else n0
            measured_e = ens_rows.get((base, v0, E))
            one = rows_g[0]
            if E == 1:
                continue
            if measured_e:
                step_e, how_e = measured_e["step_s"], "measured ensemble"
            else:
                cfg = run_config(n0, v0, group[0][2])
                with torch.device("meta"):
                    n = GPT(cfg.model_config(vocab_guess(cfg))).num_params()
                fpt = flops_per_token(n, cfg.n_layer, cfg.n_embd, cfg.block_size)
                compute = E * cfg.batch_size * cfg.block_size * fpt / (fb["peak_flops"] * fb["utilisation"])
                overhead = fb["step_overhead_s"] * cfg.n_layer / ref_layers
                step_e, how_e = max(compute, overhead), "extrapolated ensemble"
                note = (f"{n0}: an ensemble of {E} seeds' step extrapolated, max({E} x compute, "
                        f"one launch overhead) = {1e3 * step_e:.1f} ms")
                if note not in notes:
                    notes.append(note)
            share = one["train_s"] / one["step_s"] * step_e / E     # each member's share
            for r in rows_g:
                r.update(train_s=share, step_s=step_e / E, how=how_e)
    par = {r["profile"]: r for r in check.get("parallel") or []}
    if jobs == 1:
        speedup, how = 1.0, "one run at a time"
    elif profile in par and par[profile]["jobs"] == jobs:
        speedup, how = par[profile]["speedup"], f"measured for {profile}"
    elif ref_testbed in par and par[ref_testbed]["jobs"] == jobs:
        speedup = par[ref_testbed]["speedup"]
        how = f"measured for {ref_testbed}'s small launch-bound model at {jobs} jobs"
    else:
        speedup, how = 1.0, f"not measured at {jobs} jobs: none assumed"
    work = sum(r["train_s"] + r["measure_s"] for r in per_run)
    start = process_start_s_from(check)
    stages = {"data": data_s, "train and measure": work / speedup, "worker start": start}
    return {"profile": profile, "jobs": jobs, "ensemble": ensemble, "runs": len(per_run),
            "speedup": speedup,
            "speedup_how": how, "stages_s": stages, "total_s": sum(stages.values()),
            "train_s": sum(r["train_s"] for r in per_run) / speedup,
            "measure_s": sum(r["measure_s"] for r in per_run) / speedup,
            "extrapolated": any(r["how"].startswith("extrapolated") for r in per_run),
            "notes": notes, "per_run": per_run, "from_check": check["provenance"]}


def process_start_s_from(check: dict) -> float:
    """One worker's start (interpreter, torch, CUDA) from a check: its notebook overhead's
    kernel share less papermill's, or a measured bare start."""
    nb = check.get("notebook_overhead") or {}
    if "kernel_s" in nb:
        return max(0.0, nb["kernel_s"] - PAPERMILL_EXTRA_S)
    return 5.0


def estimate_from(check: dict, profile: str | None = None, jobs: int | None = None) -> dict:
    """The estimate for the profiles as they are now, from the rates a check measured."""
    from .pipeline import load_profile

    check = normalized(check)
    profile = profile or check["profile"]
    main = load_profile(profile)
    mode = main["train"].get("compile_mode", "default")
    rates = {(r["profile"], r["variant"]): r["tokens_per_s"] for r in check["training"]
             if not r["compile"]}
    compiled = {(r["profile"], r["variant"]): r["tokens_per_s"] for r in check["training"]
                if r["compile"] and r.get("compile_mode", "default") == mode}
    if main["train"].get("compile"):
        rates.update(compiled)
    missing = []
    for name in [profile, main.get("testbed")]:
        measured = [x for (p, _), x in rates.items() if p == name]
        for v in (load_profile(name)["variants"] if name and measured else []):
            if (name, v) not in rates:  # not measured: the slowest measured variant's rate
                rates[(name, v)] = min(measured)
                missing.append(f"{name}/{v}")
    measure_s = {r["profile"]: (r["measure_mid_s"], r["measure_final_s"])
                 for r in check["training"] if "measure_final_s" in r}
    speedup = {r["profile"]: r["speedup"] for r in check.get("parallel") or []}
    jobs = jobs if jobs is not None else check.get("jobs", 1)
    est = estimate(profile, rates, measure_s, check["notebook_overhead"]["seconds"],
                   check["bench_s"], speedup=speedup, jobs=jobs)
    est["assumptions"]["variants at the slowest measured rate"] = missing
    est["from_check"] = check["provenance"]
    return est


def compiled_training_ratio(check: dict) -> float | None:
    """softmax1's compiled tokens/s over softmax's, training the check's own profile."""
    rate = {r["variant"]: r["tokens_per_s"] for r in check.get("training") or []
            if r["profile"] == check.get("profile") and r["compile"]
            and r.get("compile_mode", "default") == "default"}
    if "softmax" in rate and "softmax1" in rate:
        return rate["softmax1"] / rate["softmax"]
    return None


def summary_lines(check: dict) -> list[str]:
    """A short human summary of a check.json."""
    lines = [f"gpu-check on {check['provenance'].get('device_name', '?')} "
             f"(torch {check['provenance'].get('torch', '?')}), {check['wall_s']:.0f} s"]
    tests = check.get("cuda_tests")
    if tests:
        lines.append(f"CUDA tests: {'passed' if tests['passed'] else 'FAILED'} ({tests['summary']})")
    errs = check.get("kernel_errors") or []
    failed = [r for r in errs if "error" in r]
    if failed:
        lines.append(f"kernel errors: {len(failed)} case(s) could not run, e.g. {failed[0]['kernel']} "
                     f"{failed[0]['dtype']} D={failed[0]['D']} T={failed[0]['T']}: {failed[0]['error']}")
    errs = [r for r in errs if "error" not in r]
    if errs:
        bad = [r for r in errs if not r["ok"]]
        worst = max(errs, key=lambda r: r["max_err"] / r["tolerance"])
        lines.append(f"kernel errors: {len(errs) - len(bad)}/{len(errs)} within tolerance; worst "
                     f"{worst['max_err']:.2e} ({worst['kernel']} {worst['dtype']} D={worst['D']} "
                     f"T={worst['T']} {worst['variant']}; fused softmax there "
                     f"{worst['softmax_kernel_max_err']:.2e})")
    for r in check.get("attention_bench") or []:
        if r.get("variant") in ("softmax1", "sink") and r.get("impl") == "fast" and "time_ratio" in r:
            lines.append(f"attention T={r['T']:6d} {r['variant']:8s} time x{r['time_ratio']:.3f} "
                         f"memory x{r['memory_ratio']:.3f}")
    if check.get("softmax_backend"):
        lines.append(f"SDPA's own choice for causal bf16 softmax: {check['softmax_backend']}")
    flash = {r["T"]: r for r in check.get("attention_same_kernel") or []}
    for r in check.get("attention_bench") or []:
        if r.get("impl") == "fast" and r.get("variant") in ("softmax1", "sink") and r["T"] in flash:
            f = flash[r["T"]]
            lines.append(f"attention T={r['T']:6d} {r['variant']:8s} against softmax on the same "
                         f"flash kernel: time x{r['median_ms'] / f['median_ms']:.3f} "
                         f"memory x{r['peak_mib'] / f['peak_mib']:.3f}")
    for r in (check.get("kernel_sweep") or {}).get("summary", []):
        mem = f" memory x{r['memory_ratio']:.3f}" if r.get("memory_ratio") is not None else ""
        dflt = (f"; default route {r['default_route']} x{r['default_time_ratio']:.3f}"
                if r.get("default_time_ratio") is not None else "")
        lines.append(f"sweep D={r['D']:3d} T={r['T']:6d} {r['variant']:8s} {r['fastest_route']} "
                     f"x{r['time_ratio']:.3f}{mem} of softmax on {r['softmax_backend']}{dflt}")
    ratio = compiled_training_ratio(check)
    if ratio is not None:
        lines.append(f"training {check['profile']} compiled: softmax1 at x{ratio:.3f} of softmax's "
                     f"tokens/s")
    for r in check.get("training") or []:
        lines.append(f"train {r['profile']:12s} {r['variant']:9s} "
                     f"{'compiled' if r['compile'] else 'eager   '} {r['tokens_per_s']:12,.0f} tokens/s")
    for v, r in (check.get("compile_graph_breaks") or {}).items():
        lines.append(f"torch.compile {v}: {r['graphs']} graph(s), {r['graph_breaks']} graph break(s)")
    est = check.get("estimate")
    if est:
        st = est["stages_s"]
        lines.append(f"estimated make reproduce PROFILE={est['profile']} JOBS={est.get('jobs', 1)}: "
                     f"{est['total_s'] / 60:.1f} min ("
                     + ", ".join(f"{k} {v / 60:.1f}" for k, v in st.items()) + ")")
    return lines


# --------------------------------------------------------------------------------------------

def training_rows(profile: str, work: Path, cpu_rehearsal: bool, steps: int,
                  toy: dict) -> list[dict]:
    """train_rate for the profile's variants (softmax and softmax1 with compile off and on, the
    others eagerly, for half the steps) and its testbed's, measuring one checkpoint of each."""
    from .pipeline import load_profile

    rows = []
    for name in [profile, load_profile(profile).get("testbed")]:
        if not name:
            continue
        variants = load_profile(name)["variants"]
        for variant in variants[:2] if cpu_rehearsal else variants:
            main_pair = name == profile and variant in ("softmax", "softmax1")
            # eager, compiled, and compiled with CUDA graphs (reduce-overhead: the lever for
            # small launch-bound models)
            modes = ((False, "default"), (True, "default"), (True, "reduce-overhead")) \
                if main_pair and not cpu_rehearsal else ((False, "default"),)
            for compile, mode in modes:
                rows.append(train_rate(name, variant, steps if main_pair else max(1, steps // 2),
                                       compile, work, overrides={**toy, "compile_mode": mode},
                                       measure_it=not compile and variant == (
                                           "softmax1" if name == profile else variants[0])))
                rows[-1]["compile_mode"] = mode
                print(f"    {name} {variant} {'compiled ' + mode if compile else 'eager'}: "
                      f"{rows[-1]['tokens_per_s']:,.0f} tokens/s", flush=True)
    return rows


def run_check(out: Path, cpu_rehearsal: bool = False, profile: str = "gpu",
              peak_flops: float = PEAK_BF16_FLOPS, jobs: int = GPU_JOBS) -> dict:
    """Everything above, in order; writes `out` (JSON) and returns its content.

    Longer than the package's 60 lines on purpose: it is the check's script, a flat list of
    stages read top to bottom, each writing the JSON as it goes (so a check cut short still
    leaves what it measured); splitting it would hide the order the budget depends on."""
    from .bench import BLOCK_S, bench_attention
    from .io import write_json
    from .pipeline import load_profile, repo_root
    from .provenance import provenance

    t0 = time.perf_counter()
    root = repo_root()
    device = "cpu" if cpu_rehearsal else "cuda"
    main = load_profile(profile)
    testbed = main.get("testbed")
    check: dict = {"format": "offbyone-gpu-check", "profile": profile,
                   "profiles_version": PROFILES_VERSION,
                   "cpu_rehearsal": cpu_rehearsal, "provenance": provenance(device)}

    def stage(name):
        # what is done so far is kept, so a check cut short still leaves its results
        check["wall_s"] = time.perf_counter() - t0
        check["stages_done"] = check.get("stages_done", []) + ([name] if name else [])
        write_json(out, check)
        print(f"==> [gpu-check] {name} ({time.perf_counter() - t0:.0f} s)", flush=True)

    if not cpu_rehearsal:
        stage("CUDA tests")
        check["cuda_tests"] = run_cuda_tests(root)
        stage("kernel errors against float64")
        check["kernel_errors"] = kernel_error_table()

    stage("attention benchmark")
    Ts = [64, 128] if cpu_rehearsal else [1024, 2048, 4096, 8192, 16384]
    tb = time.perf_counter()
    # rounds as long as the profile's own bench takes them, so that its time estimate holds
    block_s = (main.get("bench") or {}).get("block_s", BLOCK_S)
    check["attention_bench"] = bench_attention(Ts, 2 if cpu_rehearsal else 10, device,
                                               block_s=block_s)
    bench_s = time.perf_counter() - tb

    stage("kernel sweep")
    if cpu_rehearsal:
        check["kernel_sweep"] = kernel_sweep((32, 64), (16,), B=1, H=2, repeats=3, device="cpu",
                                             dtype=torch.float32)
    else:
        check["kernel_sweep"] = kernel_sweep()

    if not cpu_rehearsal:
        stage("softmax through the sink path's own kernel")
        check["softmax_backend"], check["attention_same_kernel"] = same_kernel_bench(Ts)

    stage("training and measurement")
    steps = 4 if cpu_rehearsal else 200
    toy = {"n_layer": 1, "n_embd": 32, "n_head": 2, "batch_size": 2, "block_size": 32} if cpu_rehearsal else {}
    work = Path(tempfile.mkdtemp(prefix="gpu-check-", dir=root / "build" if (root / "build").is_dir() else None))
    try:
        rows = check["training"] = training_rows(profile, work, cpu_rehearsal, steps, toy)
        stage(f"{jobs} runs at once")
        check["parallel"] = [parallel_speedup(profile, steps, jobs, work, toy)]
        if testbed:
            check["parallel"].append(parallel_speedup(testbed, 4 if cpu_rehearsal else 1000, jobs,
                                                      work, toy))
        for r in check["parallel"]:
            print(f"    {r['profile']}: {jobs} runs at once, speedup {r['speedup']:.2f}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    stage("seeds as one ensemble")
    work = Path(tempfile.mkdtemp(prefix="gpu-check-", dir=root / "build" if (root / "build").is_dir() else None))
    try:
        size = 2 if cpu_rehearsal else max(len(main["seeds"]), 2)
        check["ensemble"] = [ensemble_rate(profile, v, size, steps, work, toy)
                             for v in main["variants"][:2]]
        for r in check["ensemble"]:
            print(f"    {r['variant']}: {r['ensemble_of']} seeds as one ensemble, "
                  f"{1e3 * r['step_s']:.1f} ms a step", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if not cpu_rehearsal:
        stage("graph breaks of the compiled model on CUDA")
        check["compile_graph_breaks"] = {v: graph_breaks(profile, v) for v in ("softmax1", "sink")}

    stage("estimate")
    compiled = bool(main["train"].get("compile", False))
    check["bench_s"] = bench_s
    check["notebook_overhead"] = notebook_overhead_s(profile)
    check["jobs"] = jobs
    check["estimate"] = estimate_from(check)
    check["estimate_one_job"] = estimate_from(check, jobs=1)
    # the written count, with the utilisation and per-step overhead these runs achieved
    check["flop_budget"] = measured_flop_budget(profile, rows, compiled, peak_flops)
    check["study_estimate"] = study_estimate(check, profile, jobs)
    check["study_estimate_ensembles"] = study_estimate(check, profile, jobs, len(main["seeds"]))
    stage("done")
    return check


def print_estimates(check: dict, profile: str, jobs: int) -> None:
    """The study runner's estimate for `profile`, and the notebook pipeline's where the check
    measured that profile's model (with the written FLOP count of its training)."""
    for e in (1, 5):
        _print_study_estimate(check, profile, jobs, e)
    try:
        est = estimate_from(check, profile, jobs)
    except KeyError:
        print(f"make reproduce PROFILE={profile} (notebooks): no estimate, the check did not "
              "train this profile's model")
        return
    _print_pipeline_estimate(check, profile, est)


def _print_study_estimate(check: dict, profile: str, jobs: int, ensemble: int) -> None:
    st = study_estimate(check, profile, jobs, ensemble)
    print(f"estimated python -m offbyone.study run {profile} --jobs {jobs}"
          f"{f' --ensemble {ensemble}' if ensemble > 1 else ''} on "
          f"{st['from_check'].get('device_name', '?')}: {st['total_s'] / 60:.1f} min for "
          f"{st['runs']} runs (" + ", ".join(f"{k} {v / 60:.1f}" for k, v in st["stages_s"].items())
          + f"; {jobs} at once, speedup {st['speedup']:.2f}: {st['speedup_how']})")
    for note in st["notes"]:
        print(f"  {note}")
    if st["extrapolated"]:
        print("  the check did not time this profile's model so: run make gpu-check on the GPU "
              "to measure it")


def _print_pipeline_estimate(check: dict, profile: str, est: dict) -> None:
    print("\n".join(summary_lines({"provenance": check["provenance"], "wall_s": 0,
                                     "estimate": est})[1:]))
    for r in est["per_profile"]:
        print(f"  {r['profile']:12s} {r['runs']:3d} runs  train {r['train_s'] / 60:5.1f} min  "
              f"measure {r['measure_s'] / 60:5.1f} min  (speedup {r['speedup']:.2f})")
    fb = check["flop_budget"]
    count = flop_budget(profile, fb["peak_flops"], fb["utilisation"], fb["step_overhead_s"],
                        model_sizes(check["training"], profile))
    print(f"written count of training alone, one run at a time: peak {fb['peak_flops'] / 1e12:.0f} TFLOP/s, "
          f"utilisation {fb['utilisation']:.3f}, per-step overhead "
          f"{1e3 * fb['step_overhead_s']:.1f} ms (measured)")
    for r in count["profiles"]:
        print(f"  {r['profile']:12s} {r['runs']:3d} runs x {r['steps']} steps = "
              f"{r['tokens'] / 1e6:,.0f}M tokens x {r['flops_per_token']:.3g} FLOP/token = "
              f"{r['flops']:.3g} FLOP: max(compute {r['compute_s'] / 60:.1f} min, overhead "
              f"{r['overhead_s'] / 60:.1f} min)")


def main(argv=None):
    ap = argparse.ArgumentParser(description="Check a CUDA GPU for the gpu profile in about ten "
                                             "minutes; writes results/gpu/check.json.")
    ap.add_argument("--out", default=None, help="where the JSON goes (default results/gpu/check.json)")
    ap.add_argument("--profile", default="gpu", help="the profile to time (default gpu)")
    ap.add_argument("--cpu-rehearsal", action="store_true",
                    help="run what does not need CUDA on the CPU at toy sizes (for tests)")
    ap.add_argument("--peak-tflops", type=float, default=PEAK_BF16_FLOPS / 1e12,
                    help="the GPU's dense bf16 peak, for the utilisation (default: H100/H200 SXM)")
    ap.add_argument("--jobs", type=int, default=GPU_JOBS,
                    help=f"runs at once to time, as make reproduce JOBS=N (default {GPU_JOBS})")
    ap.add_argument("--estimate-from", metavar="CHECK_JSON",
                    help="no GPU needed: print the estimate for the profiles as they are now "
                         "from the rates an earlier check measured")
    args = ap.parse_args(argv)
    from .pipeline import repo_root
    if args.estimate_from:
        check = normalized(json.loads(Path(args.estimate_from).read_text()))
        print_estimates(check, args.profile, args.jobs)
        return
    if not args.cpu_rehearsal and not torch.cuda.is_available():
        print("gpu-check needs a CUDA GPU, and torch sees none here "
              f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}). "
              "Run it on a machine with an NVIDIA GPU and the CUDA build of torch "
              "(make setup installs it where nvidia-smi works).", file=sys.stderr)
        sys.exit(NO_CUDA_EXIT)
    out = Path(args.out) if args.out else repo_root() / "results" / "gpu" / "check.json"
    check = run_check(out, cpu_rehearsal=args.cpu_rehearsal, profile=args.profile,
                      peak_flops=args.peak_tflops * 1e12, jobs=args.jobs)
    print("\n".join(summary_lines(check)))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
