"""The check's script and its command line (python -m offbyone.gpu_check): every stage in order,
writing results/gpu/check.json as it goes."""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from ..bench import BLOCK_S, bench_attention
from ..io import write_json
from ..profiles import load_profile, repo_root
from ..provenance import provenance
from .estimate import (GPU_JOBS, PEAK_BF16_FLOPS, PROFILES_VERSION, estimate_from,
                       measured_flop_budget, normalized, study_estimate)
from .kernels import kernel_error_table, run_cuda_tests
from .rates import (ensemble_rate, graph_breaks, notebook_overhead_s, parallel_speedup,
                    training_rows)
from .summary import print_estimates, summary_lines
from .sweep import kernel_sweep

NO_CUDA_EXIT = 2


def run_check(out: Path, cpu_rehearsal: bool = False, profile: str = "gpu",
              peak_flops: float = PEAK_BF16_FLOPS, jobs: int = GPU_JOBS) -> dict:
    """Everything above, in order; writes `out` (JSON) and returns its content.

    Longer than the package's 60 lines on purpose: it is the check's script, a flat list of
    stages read top to bottom, each writing the JSON as it goes (so a check cut short still
    leaves what it measured); splitting it would hide the order the budget depends on."""

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
