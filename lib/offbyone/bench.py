"""Benchmarks: attention forward + backward, and training throughput per variant.

    python -m offbyone.bench                      # both, CSVs under results/bench/
    python -m offbyone.bench --what attention --T 64 256 1024 4096 --repeats 10 --budget-s 30

Attention: B = 8, H = 8, D = 64, causal; fp32 on CPU, bf16 on CUDA. With a token cap
(`max_tokens`, the cpu profile's 4,096) B shrinks at long T so that B * T stays within it
(B = 1 at T = 4,096): one pass then takes about half a second on a 2-core CPU rather than four,
and several passes of every case alternate within a round. Times: after warm-up, timed rounds in
one process; a round runs every case for at least BLOCK_S seconds of passes, the cases
alternating pass by pass, so that a shared machine's drifts hit all alike (a case's time for the
round is the median of its passes); each case's ratio to
fused softmax is the median of its per-round ratios (paired by round), printed with their
interquartile range, and the median per-round difference at the smallest T is the per-call
overhead. On CPU the timing process keeps the memory it frees (`steady_allocator`: glibc's mmap
and trim thresholds fixed), so that no case pays for page faults that other allocations left it;
each row records its minor page faults a pass. Peak memory: each case once more, the peak above
the memory held after warm-up, so that the inputs and the one-time buffers of the first pass
(about 40 MiB on CPU) do not count.
On a GPU it is the CUDA allocator's peak, read in this process (the allocator counts exactly
what is live). On CPU it is the peak resident memory of a fresh process, restarted through
/proc/self/clear_refs, which runs with glibc's mmap threshold fixed at 128 KiB
(MALLOC_MMAP_THRESHOLD_): by default the threshold follows the sizes freed so far, so large
tensors land on the heap or not depending on the allocation history, and the same case's peak
RSS varied by 40% between runs; fixed, every tensor above 128 KiB is its own mapping, returned
when freed, and the peak RSS follows the peak of live tensors (repeats agree within 0.5 MiB).
Training: tokens/s of the GPT of a profile for every variant (steps interleaved across variants,
same batches), and the share of a step spent outside forward, backward and the optimizer.
Timings are measurements, not tests: nothing here asserts a speed.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from .attention import VARIANTS, fast_attention, reference_attention
from .data import prepare_for
from .device import autocast_for, pick_device
from .io import write_csv
from .model import GPT
from .profiles import load_profile, repo_root, run_config
from .tokens import TokenData
from .train import train_step

# a timed round gives each case this many seconds of forward + backward passes, at least (a
# profile's bench may set its own `block_s`): with 0.2 s the per-round ratios on a shared 2-core
# VM spread by +-2.5% at T = 256; 1 s takes five times as many passes. GPU passes are steady
# milliseconds: the gpu profiles ask for 0.2 s
BLOCK_S = 1.0
# glibc: a fixed threshold (bytes) turns off its dynamic adjustment; see the module docstring
CPU_CHILD_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}
# the timing process's allocator (`steady_allocator`): glibc's mallopt parameters (malloc.h), the
# largest mmap threshold glibc accepts (tensors up to 32 MiB come from the heap, which the
# bench's up to 8 MiB tensors do) and a trim threshold that never returns the heap's top
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
TIMING_MMAP_THRESHOLD = 32 * 2**20
TIMING_TRIM_THRESHOLD = 2**31 - 1
_ALLOCATOR = {"steady": False}

ATTENTION_CASES = [  # (label, variant, implementation)
    ("softmax (fused SDPA)", "softmax", "fast"),
    ("softmax1 (fast path)", "softmax1", "fast"),
    ("sink (fast path)", "sink", "fast"),
    ("softmax1 (materialised reference)", "softmax1", "reference"),
]


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _status_mib(field: str) -> float | None:
    """A memory field of /proc/self/status (VmHWM: peak resident memory, VmRSS: current), in MiB;
    None off Linux. VmHWM belongs to the process image (the rusage peak would carry over the
    parent's across fork and exec)."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _rss_mib() -> float:
    """This process's peak resident memory so far (or since the last _reset_peak_rss)."""
    peak = _status_mib("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak_rss() -> bool:
    """Restart the peak resident memory from the current one (Linux >= 4.0: clear_refs 5)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def steady_allocator() -> bool:
    """Make this process keep the memory it frees, as PyTorch's caching allocator does on a GPU:
    glibc's mmap and trim thresholds fixed (which also turns off their adaptation). With the
    adaptive defaults, whether a pass's large tensors come from pages already mapped or from
    fresh ones that fault on first touch depends on what the process allocated and freed
    before: the same case's pass then took either no minor page fault or a thousand (4 MiB of
    fresh pages, about 3 ms on a 32 ms pass at T = 256), and which case paid it changed from
    process to process. The timed rounds record their faults a pass (`faults_per_pass`). Returns
    whether it took effect (glibc only; the peak-memory children set their own thresholds)."""
    if sys.platform != "linux":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = (mallopt(_M_MMAP_THRESHOLD, TIMING_MMAP_THRESHOLD) == 1
          and mallopt(_M_TRIM_THRESHOLD, TIMING_TRIM_THRESHOLD) == 1)
    _ALLOCATOR["steady"] = _ALLOCATOR["steady"] or ok
    return ok


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _inputs(T, B, H, D, device, variant):
    dev = torch.device(device)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    g = torch.Generator(device="cpu").manual_seed(0)
    q, k, v = (torch.randn(B, H, T, D, generator=g).to(dev, dtype).requires_grad_()
               for _ in range(3))
    sink = (torch.zeros(H, device=dev, dtype=dtype, requires_grad=True) if variant == "sink"
            else None)
    grad = torch.randn(B, H, T, D, generator=g).to(dev, dtype)
    return dev, dtype, q, k, v, sink, grad


def _timed_pass(variant, impl, dev, q, k, v, sink, grad) -> float:
    """Seconds of one forward + backward; the gradients are cleared afterwards."""
    fn = fast_attention if impl == "fast" else (lambda *a: reference_attention(*a)[0])
    _sync(dev)
    t0 = time.perf_counter()
    fn(q, k, v, variant, sink).backward(grad)
    _sync(dev)
    seconds = time.perf_counter() - t0
    for t in (q, k, v, sink):
        if t is not None:
            t.grad = None
    return seconds


def time_attention(variant: str, impl: str, T: int, B: int = 8, H: int = 8, D: int = 64,
                   repeats: int = 5, warmup: int = 2, device: str = "cpu") -> dict:
    """Median forward + backward time and peak memory of one configuration (this process)."""
    dev, dtype, q, k, v, sink, grad = _inputs(T, B, H, D, device, variant)
    cuda = dev.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = torch.cuda.memory_allocated() if cuda else _rss_mib()
    for _ in range(warmup):
        _timed_pass(variant, impl, dev, q, k, v, sink, grad)
    first_peak = (torch.cuda.max_memory_allocated() - start) / 2**20 if cuda else _rss_mib() - start
    # the peak is read above the steady state after warm-up, so one-time allocations (libraries'
    # buffers and thread pools set up by the first pass) do not count; the inputs never count
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    elif _reset_peak_rss():
        base = _status_mib("VmRSS")
    else:  # no way to restart the peak: count from before warm-up
        base = start
    times = [_timed_pass(variant, impl, dev, q, k, v, sink, grad) for _ in range(repeats)]
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if cuda else _rss_mib() - base
    return {"variant": variant, "impl": impl, "T": T, "B": B, "H": H, "D": D,
            "dtype": str(dtype).replace("torch.", ""), "device": dev.type,
            "median_ms": 1e3 * statistics.median(times), "min_ms": 1e3 * min(times),
            "repeats": repeats, "peak_mib": peak, "warmup_peak_mib": first_peak,
            "threads": torch.get_num_threads(),
            "malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_", "")}


def _quartiles(x) -> tuple[float, float, float]:
    """(first quartile, median, third quartile), numpy's default (linear) definition."""
    import numpy as np
    q1, med, q3 = np.percentile(np.asarray(x, dtype=float), [25, 50, 75])
    return float(q1), float(med), float(q3)


def rounds_for(round_s: float, repeats: int, max_repeats: int | None = None,
               budget_s: float = 0.0) -> int:
    """How many timed rounds a sequence length gets: as many as `budget_s` seconds allow at
    `round_s` seconds a round, at least `repeats` and at most `max_repeats`."""
    hi = max(repeats, max_repeats or repeats)
    want = int(budget_s / round_s) if round_s > 0 else hi
    return min(max(want, repeats), hi)


def batch_for(T: int, B: int = 8, max_tokens: int | None = None) -> int:
    """The batch size the bench times at length T: B, or fewer sequences where B * T would
    exceed `max_tokens` (one at least)."""
    if max_tokens is None:
        return B
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be a positive number of tokens, got {max_tokens}")
    return max(1, min(B, max_tokens // T))


def bench_attention(Ts, repeats: int, device: str, max_reference_gib: float = 6.0,
                    B: int = 8, H: int = 8, D: int = 64, max_repeats: int | None = None,
                    budget_s: float = 0.0, reference_repeats: int = 5,
                    max_tokens: int | None = None, block_s: float = BLOCK_S,
                    min_passes: int = 1) -> list[dict]:
    """Times are taken in this process with the cases interleaved round by round (rotating
    their order), so slow drifts of a shared machine hit every case alike; peak memory is
    read in a fresh process per case.

    Each T gets `rounds_for(...)` timed rounds after two warm-up rounds (`repeats` at least);
    the materialising reference takes part in the first `reference_repeats` of them only (it is
    not what the ratios are about, and it is slow). Every row carries the quartiles of its times
    and, for the fast cases, of its per-round ratio to fused softmax timed in the same round
    (`time_ratio` is their median, `ratio_q1` and `ratio_q3` the interquartile range), and the
    median per-round difference in microseconds (`extra_us`): at small T that is the per-call
    overhead. `max_tokens` caps B * T (`batch_for`); each row records the B it ran at.
    `block_s`: a round's seconds of passes per case, at least (BLOCK_S unless asked), and
    `min_passes` its passes per case, at least: at long T a pass takes half a second on CPU,
    and a round's median of two passes still moves with one slow pass."""
    if min_passes < 1:
        raise ValueError(f"min_passes must be a positive number of passes, got {min_passes}")
    rows = []
    B_max = B
    for T in Ts:
        B = batch_for(T, B_max, max_tokens)
        cases = []
        for label, variant, impl in ATTENTION_CASES:
            # the reference holds scores, probabilities and their gradients: ~4 x B H T^2 floats
            need_gib = 4 * B * H * T * T * 4 / 2**30
            if impl == "reference" and need_gib > max_reference_gib:
                rows.append({"label": label, "variant": variant, "impl": impl, "T": T,
                             "skipped": f"needs about {need_gib:.0f} GiB"})
                print(f"T={T:6d} {label:36s} skipped (about {need_gib:.0f} GiB)", flush=True)
                continue
            cases.append((label, variant, impl))
        times, passes, faults = _timed_rounds(cases, T, B, H, D, device, repeats, max_repeats,
                                              budget_s, reference_repeats, block_s,
                                              min_passes)
        base = times[cases[0]]  # fused softmax, the first case
        for label, variant, impl in cases:
            mem = _peak_memory(variant, impl, T, B, H, D, device)
            t = times[(label, variant, impl)]
            q1, med, q3 = _quartiles(t)
            row = {"label": label, **mem, "median_ms": 1e3 * med, "q1_ms": 1e3 * q1,
                   "q3_ms": 1e3 * q3, "min_ms": 1e3 * min(t), "repeats": len(t),
                   "passes_per_round": 1 if impl == "reference" else passes,
                   "block_s": block_s, "min_passes": min_passes,
                   "faults_per_pass": statistics.median(faults[(label, variant, impl)]),
                   "steady_allocator": _ALLOCATOR["steady"]}
            paired = list(zip(t, base))  # rounds in which both ran
            r1, rmed, r3 = _quartiles([a / b for a, b in paired])
            row.update(time_ratio=rmed, ratio_q1=r1, ratio_q3=r3,
                       extra_us=1e6 * _quartiles([a - b for a, b in paired])[1])
            rows.append(row)
            print(f"T={T:6d} {label:36s} {row['median_ms']:9.2f} ms (IQR {row['q1_ms']:.2f} to "
                  f"{row['q3_ms']:.2f})  x{rmed:.3f} (IQR {r1:.3f} to {r3:.3f})  "
                  f"{row['extra_us']:+8.0f} us  peak {row['peak_mib']:8.1f} MiB  "
                  f"{len(t)} rounds", flush=True)
    # memory ratios against fused softmax at the same T
    base_rows = {r["T"]: r for r in rows if r["variant"] == "softmax" and "median_ms" in r}
    for r in rows:
        if "median_ms" in r and r["T"] in base_rows:
            b = base_rows[r["T"]]["peak_mib"]
            r["memory_ratio"] = r["peak_mib"] / b if b > 0 else float("nan")
    return rows


def _timed_rounds(cases, T, B, H, D, device, repeats, max_repeats, budget_s, reference_repeats,
                  block_s=BLOCK_S, min_passes=1):
    """({case: [seconds per pass, one median per timed round]}, passes per round,
    {case: [minor page faults a pass, one median per timed round]}): two warm-up rounds of one
    pass per case, then as many timed rounds as `rounds_for` allows at the warm-up's pace, each
    giving every fast case the same number of passes (at least `block_s` seconds of the
    quickest, and at least `min_passes`) and the reference one, in an order rotated round by round."""
    times = {c: [] for c in cases}
    faults = {c: [] for c in cases}
    warm = {c: [] for c in cases}
    inputs = {c: _inputs(T, B, H, D, device, c[1]) for c in cases}

    def one_round(i, into, with_reference, passes=1, faults_into=None):
        """Each case `passes` times (the reference once), the cases alternating pass by pass in
        an order rotated by i, so that the machine's drifts within the round hit all alike; a
        case's time for the round is the median of its passes, so that one pass that a
        neighbour's burst of work slowed does not move the round's ratio."""
        live = [c for c in cases if with_reference or c[2] != "reference"]
        order = live[i % len(live):] + live[:i % len(live)]
        spent = {c: [] for c in order}
        faulted = {c: [] for c in order}
        for p in range(passes):
            for c in order:
                if p == 0 or c[2] != "reference":
                    dev, _, q, k, v, sink, grad = inputs[c]
                    f0 = _minor_faults()
                    spent[c].append(_timed_pass(c[1], c[2], dev, q, k, v, sink, grad))
                    faulted[c].append(_minor_faults() - f0)
        for c in order:
            into[c].append(statistics.median(spent[c]))
            if faults_into is not None:
                faults_into[c].append(statistics.median(faulted[c]))

    warmup = 2
    for i in range(warmup):
        one_round(i, warm, True)
    # the pace of a timed round: the fast cases' last warm-up times; a round gives each case
    # passes worth at least block_s seconds, and at least min_passes, so that its ratio is not
    # one pass's jitter
    pass_s = {c: w[-1] for c, w in warm.items() if c[2] != "reference"}
    shortest = min(pass_s.values())
    passes = max(min_passes, math.ceil(block_s / shortest) if shortest > 0 else 1)
    n = rounds_for(passes * sum(pass_s.values()), repeats, max_repeats, budget_s)
    for i in range(n):
        one_round(warmup + i, times, i < reference_repeats, passes, faults)
    return times, passes, faults


def _peak_memory(variant, impl, T, B, H, D, device) -> dict:
    """One case's peak memory. On CUDA the caching allocator counts exactly what is live, so it
    is read in this process (after emptying the cache); on CPU the resident memory is read in a
    fresh process (see the module docstring)."""
    args = {"variant": variant, "impl": impl, "T": T, "repeats": 1, "warmup": 1,
            "device": device, "B": B, "H": H, "D": D}
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        return time_attention(**args)
    cmd = [sys.executable, "-m", "offbyone.bench", "--child", json.dumps(args)]
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **CPU_CHILD_ENV})
    if res.returncode != 0:
        raise RuntimeError(f"benchmark of {variant} ({impl}) at T={T} failed:\n"
                           f"{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def bench_training(profile: str, variants, steps: int, warmup: int, device: str) -> list[dict]:
    """Tokens/s of every variant at a profile's model size, and where a step's time goes. Each
    step is the trainer's own `train_step`; the variants' steps are interleaved round by round,
    each on the same batches."""
    dev, variants = torch.device(device), list(dict.fromkeys(variants))
    runs = {v: _training_run(profile, v, dev) for v in variants}
    for i in range(warmup + steps):
        order = variants[i % len(variants):] + variants[:i % len(variants)]
        for variant in order:
            r = runs[variant]
            _sync(dev)
            t = [time.perf_counter()]
            x, y = r["data"].get_batch("train", r["cfg"].batch_size, r["cfg"].block_size,
                                       r["gen"], r["cfg"].bos)
            x, y = x.to(dev), y.to(dev)
            t.append(time.perf_counter())

            def lap(part):
                _sync(dev)
                t.append(time.perf_counter())
            train_step(r["model"], r["opt"], x, y, r["cfg"].grad_clip, autocast_for(dev), lap)
            if i >= warmup:
                for k, a, b in zip(r["parts"], t, t[1:]):
                    r["parts"][k] += b - a
    rows = [_training_row(profile, v, runs[v], steps, dev) for v in variants]
    base = next((r for r in rows if r["variant"] == "softmax"), None)
    for r in rows:
        r["tokens_per_s_ratio"] = r["tokens_per_s"] / base["tokens_per_s"] if base else float("nan")
    return rows


def _training_run(profile: str, variant: str, dev: torch.device) -> dict:
    """A fresh model and optimizer of the profile's recipe with `variant`'s attention (any
    variant, not only those the profile trains)."""
    cfg = run_config(profile, load_profile(profile)["variants"][0], 0)
    cfg.attention = variant
    cfg.validate()
    data = TokenData(prepare_for(cfg))
    torch.manual_seed(0)
    model = GPT(cfg.model_config(data.vocab_size)).to(dev)
    opt = model.configure_optimizer(cfg.weight_decay, cfg.lr, (cfg.beta1, cfg.beta2), dev.type,
                                    cfg.optimizer, cfg.momentum)
    return dict(cfg=cfg, data=data, model=model, opt=opt, gen=torch.Generator().manual_seed(0),
                parts={"data": 0.0, "forward": 0.0, "backward": 0.0, "optimizer": 0.0})


def _training_row(profile: str, variant: str, run: dict, steps: int, dev: torch.device) -> dict:
    cfg, parts = run["cfg"], run["parts"]
    total = sum(parts.values())
    row = {"variant": variant, "profile": profile, "device": dev.type, "steps": steps,
           "tokens_per_s": steps * cfg.batch_size * cfg.block_size / total,
           "step_ms": 1e3 * total / steps, "outside_share": parts["data"] / total,
           **{f"{k}_share": v / total for k, v in parts.items() if k != "data"},
           "threads": torch.get_num_threads()}
    print(f"{variant:10s} {row['tokens_per_s']:10,.0f} tokens/s  step {row['step_ms']:.1f} ms  "
          f"outside fwd/bwd/opt {100 * row['outside_share']:.1f}%", flush=True)
    return row


def run_profile(profile: str, out_root: str = "results") -> Path:
    """The benchmarks a profile asks for (its `bench` options), into results/<profile>/bench/.
    Writes bench.json last, so its presence means the CSVs are complete."""
    from .io import write_json
    from .provenance import provenance

    prof = load_profile(profile)
    opts = {"T": [256, 1024, 4096], "repeats": 5, "max_repeats": None, "budget_s": 0.0,
            "max_tokens": None, "block_s": BLOCK_S, "min_passes": 1, "steps": 40, "variants": list(VARIANTS),
            **prof["bench"]}
    device = pick_device("auto").type
    out = repo_root() / out_root / profile / "bench"
    if device == "cpu":
        steady_allocator()
    t0 = time.perf_counter()
    attn = bench_attention(opts["T"], opts["repeats"], device, max_repeats=opts["max_repeats"],
                           budget_s=opts["budget_s"], max_tokens=opts["max_tokens"],
                           block_s=opts["block_s"], min_passes=opts["min_passes"])
    _write_csv(attn, out / "attention.csv")
    # every variant at the profile's model size, not only those the profile trains
    training = bench_training(profile, opts["variants"], opts["steps"], 3, device)
    _write_csv(training, out / "training.csv")
    write_json(out / "bench.json", {"profile": profile, "options": opts, "device": device,
                                           "wall_s": time.perf_counter() - t0,
                                           "provenance": provenance(device)})
    return out


def _write_csv(rows, path: Path):
    write_csv(path, rows)
    print(f"wrote {path}")


def main(argv=None):
    ap = argparse.ArgumentParser(description="Attention and training benchmarks.")
    ap.add_argument("--what", choices=["attention", "training", "both"], default="both")
    ap.add_argument("--T", type=int, nargs="+", default=None,
                    help="sequence lengths (default 256 1024 4096, and 16384 on CUDA)")
    ap.add_argument("--repeats", type=int, default=5, help="timed rounds per T, at least")
    ap.add_argument("--max-repeats", type=int, default=None,
                    help="timed rounds per T, at most (with --budget-s)")
    ap.add_argument("--budget-s", type=float, default=0.0,
                    help="seconds of timed rounds per T to aim for, within the two bounds")
    ap.add_argument("--max-tokens", type=int, default=None,
                    help="at most this many tokens (B * T) a pass: B shrinks at long T")
    ap.add_argument("--block-s", type=float, default=BLOCK_S,
                    help="seconds of passes a round gives each case, at least")
    ap.add_argument("--min-passes", type=int, default=1,
                    help="passes a round gives each case, at least")
    ap.add_argument("--profile", default=None,
                    help="model size for training (default: cpu, or gpu on CUDA)")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--out", default="results/bench", help="folder for the CSVs")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--for-profile", metavar="PROFILE",
                    help="run what configs/PROFILE.yaml's bench options ask, "
                         "into results/PROFILE/bench/")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    device = pick_device(args.device).type
    if args.child:
        print(json.dumps(time_attention(**json.loads(args.child))))
        return
    if args.for_profile:
        run_profile(args.for_profile)
        return
    if device == "cpu":
        steady_allocator()
    out = Path(args.out)
    if args.what in ("attention", "both"):
        Ts = args.T or ([256, 1024, 4096, 16384] if device == "cuda" else [256, 1024, 4096])
        _write_csv(bench_attention(Ts, args.repeats, device, max_repeats=args.max_repeats,
                                   budget_s=args.budget_s, max_tokens=args.max_tokens,
                                   block_s=args.block_s, min_passes=args.min_passes),
                   out / f"attention_{device}.csv")
    if args.what in ("training", "both"):
        profile = args.profile or ("gpu" if device == "cuda" else "cpu")
        _write_csv(bench_training(profile, args.variants, args.steps, 3, device),
                   out / f"training_{device}.csv")


if __name__ == "__main__":
    main()
