"""The one prepared script for a GPU node (issue 38, item 2):

    python -m offbyone.gpu_check.node --out OUT            # make gpu-node OUT=...

Three stages in order, each in its own child process under a hard time limit, each writing into
OUT as it finishes, so that a node that stops early still hands back what it did:

  smoke  seconds: the CUDA kernel tests and a 20-step training of each variant of the study. A
         broken environment stops here, cheaply: the later stages do not run.
  study  at most 7 minutes: `python -m offbyone.study run PROFILE --jobs J --ensemble E` with
         its archive in OUT/study.tar.gz. Resumable (a rerun trains only what is missing), and
         the archive is packed after every finished run, so a stage cut short hands back the
         runs it finished.
  sweep  at most 3 minutes: the kernel sweep (softmax1 and the sink on every fused route against
         the fastest softmax, T 256 to 16,384, head sizes 64 and 128, time and memory) and the
         compiled training ratio (softmax1 and the sink compiled against softmax compiled).

The limits sum to 11 minutes, so that one rerun fits 15 minutes of GPU time with the machine's
start. What comes back is four files, one folder deep: OUT/node.json (each stage's status, limit
and wall time, the device and torch), OUT/node.log (every stage's output), OUT/check.json (what
the smoke and the sweep measured, in `make gpu-check`'s format) and OUT/study.tar.gz (unpacked
here by `make gpu-unpack ARCHIVE=...`).

`--cpu-rehearsal` runs the same stages on the CPU at toy sizes (the study is the profile's CI
cut, `PROFILE-quickrehearsal`; the sweep two short T; nothing compiled) to show the script works
end to end: tests/test_gpu_node.py runs it.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..io import write_json
from ..profiles import QUICK_REHEARSAL_SUFFIX, load_profile, repo_root
from ..provenance import provenance

# (stage, hard limit in seconds), in the order they run
STAGES = (("smoke", 60), ("study", 420), ("sweep", 180))
TOTAL_LIMIT_S = sum(limit for _, limit in STAGES)           # 660 s: 11 minutes
SMOKE_STEPS = 20
COMPILED_STEPS = 60          # per variant, compiled: the last quarter is timed after compiling
ENSEMBLE = 5                 # seeds of a variant as one model (the estimate: 5.2 min, as with 10)
JOBS = 4


def _check_path(out: Path) -> Path:
    return out / "check.json"


def _update_check(out: Path, **parts) -> None:
    """Add `parts` to OUT/check.json (written whole each time, through a temporary)."""
    path = _check_path(out)
    check = json.loads(path.read_text()) if path.exists() else {"format": "offbyone-gpu-check"}
    check.update(parts)
    write_json(path, check)


def smoke(out: Path, profile: str, cpu: bool) -> None:
    """The CUDA tests (on a GPU) and SMOKE_STEPS steps of each variant of the study."""
    from .kernels import kernel_error_table, run_cuda_tests
    from .rates import train_rate
    root = repo_root()
    device = "cpu" if cpu else "cuda"
    _update_check(out, profile=profile, cpu_rehearsal=cpu, provenance=provenance(device))
    if not cpu:
        tests = run_cuda_tests(root)
        _update_check(out, cuda_tests=tests, kernel_errors=kernel_error_table())
        if not tests["passed"]:
            sys.exit(f"the CUDA tests failed: {tests['summary']}")
    toy = {"n_layer": 1, "n_embd": 32, "n_head": 2, "batch_size": 2, "block_size": 32,
           "max_tokens": 20_000} if cpu else {}
    rows = []
    with tempfile.TemporaryDirectory(prefix="gpu-node-") as work:
        for variant in load_profile(profile)["variants"]:
            rows.append(train_rate(profile, variant, SMOKE_STEPS, False, Path(work), overrides=toy))
            print(f"    smoke {variant}: {rows[-1]['tokens_per_s']:,.0f} tokens/s, "
                  f"loss {rows[-1]['val_loss']:.3f}", flush=True)
    _update_check(out, smoke=rows)


def sweep(out: Path, profile: str, cpu: bool) -> None:
    """The kernel sweep, then each variant compiled (eager on the CPU rehearsal) and its
    training rate over softmax's."""
    import torch

    from .rates import train_rate
    from .sweep import kernel_sweep
    if cpu:
        res = kernel_sweep((32, 64), (16,), B=1, H=2, repeats=3, device="cpu", dtype=torch.float32)
    else:
        res = kernel_sweep()
    _update_check(out, kernel_sweep=res)
    toy = {"n_layer": 1, "n_embd": 32, "n_head": 2, "batch_size": 2, "block_size": 32,
           "max_tokens": 20_000} if cpu else {}
    rows = []
    with tempfile.TemporaryDirectory(prefix="gpu-node-") as work:
        for variant in load_profile(profile)["variants"]:     # softmax first: the ratio's base
            r = train_rate(profile, variant, 8 if cpu else COMPILED_STEPS, not cpu, Path(work),
                           overrides=toy)
            r["compile_mode"] = "default"
            r["ratio_to_softmax"] = r["tokens_per_s"] / (rows[0] if rows else r)["tokens_per_s"]
            rows.append(r)
            _update_check(out, training=rows)      # each variant as it finishes
            print(f"    {variant} {'compiled' if r['compile'] else 'eager'}: "
                  f"{r['tokens_per_s']:,.0f} tokens/s, {r['ratio_to_softmax']:.3f} x softmax's",
                  flush=True)


def _run_stage(cmd: list[str], limit: float, log) -> tuple[str, float]:
    """One stage as a child process in its own session, killed (with its children) at `limit`
    seconds: ('ok' | 'failed (exit N)' | 'timed out', wall seconds)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            cwd=repo_root())
    try:
        rc = proc.wait(timeout=limit)
        status = "ok" if rc == 0 else f"failed (exit {rc})"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        status = "timed out"
    return status, time.perf_counter() - t0


def run_node(out: Path, profile: str = "gpu", cpu: bool = False, jobs: int = JOBS,
             ensemble: int = ENSEMBLE, limits: dict | None = None) -> dict:
    """Every stage in order, under its limit; OUT/node.json after each. A failed or cut smoke
    stops the script; a study cut short does not stop the sweep."""
    out.mkdir(parents=True, exist_ok=True)
    limits = {**dict(STAGES), **(limits or {})}
    study_profile = profile + (QUICK_REHEARSAL_SUFFIX if cpu else "")
    rec = {"format": "offbyone-gpu-node", "profile": profile, "study_profile": study_profile,
           "cpu_rehearsal": cpu, "jobs": jobs, "ensemble": ensemble,
           "provenance": provenance("cpu" if cpu else "cuda"), "stages": []}
    me = [sys.executable, "-m", "offbyone.gpu_check.node", "--out", str(out), "--profile", profile]
    commands = {
        "smoke": me + ["--stage", "smoke"] + (["--cpu-rehearsal"] if cpu else []),
        "study": [sys.executable, "-m", "offbyone.study", "run", study_profile,
                  "--jobs", str(jobs), "--ensemble", str(ensemble),
                  "--archive", str(out / "study.tar.gz")],
        "sweep": me + ["--stage", "sweep"] + (["--cpu-rehearsal"] if cpu else [])}
    t0 = time.perf_counter()
    with open(out / "node.log", "a") as log:
        for name, _ in STAGES:
            print(f"==> [node] {name} (at most {limits[name]:.0f} s)", flush=True)
            log.write(f"==> [node] {name} (at most {limits[name]:.0f} s)\n")
            log.flush()
            status, wall = _run_stage(commands[name], limits[name], log)
            rec["stages"].append({"stage": name, "status": status, "limit_s": limits[name],
                                  "wall_s": wall, "command": " ".join(commands[name])})
            rec["wall_s"] = time.perf_counter() - t0
            write_json(out / "node.json", rec)
            print(f"    {name}: {status} in {wall:.0f} s", flush=True)
            if name == "smoke" and status != "ok":
                print("the smoke failed: the study and the sweep are not run (node.log says "
                      "why)", flush=True)
                break
    return rec


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="The GPU node's one script: kernel tests and a "
                                 "smoke, the study, the kernel sweep, each under a hard limit.")
    ap.add_argument("--out", required=True, help="the folder that comes back from the node")
    ap.add_argument("--profile", default="gpu", help="the study's profile (default gpu)")
    ap.add_argument("--cpu-rehearsal", action="store_true",
                    help="on the CPU at toy sizes: the study's CI cut, a small sweep")
    ap.add_argument("--jobs", type=int, default=JOBS, help=f"runs at once (default {JOBS})")
    ap.add_argument("--ensemble", type=int, default=ENSEMBLE,
                    help=f"seeds of a variant as one model (default {ENSEMBLE})")
    ap.add_argument("--stage", choices=[s for s, _ in STAGES if s != "study"],
                    help="run one stage in this process (what the script's children do)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    load_profile(args.profile)                       # a bad profile stops here, before any work
    if args.stage:
        {"smoke": smoke, "sweep": sweep}[args.stage](out, args.profile, args.cpu_rehearsal)
        return
    import torch
    if not args.cpu_rehearsal and not torch.cuda.is_available():
        sys.exit("the node script needs a CUDA GPU (or --cpu-rehearsal), and torch sees none")
    rec = run_node(out, args.profile, args.cpu_rehearsal, args.jobs, args.ensemble)
    stages = ", ".join(f"{s['stage']} {s['status']}" for s in rec["stages"])
    files = ", ".join(sorted(p.name for p in out.iterdir()))
    print(f"node: {stages}; {rec['wall_s'] / 60:.1f} min; files in {out}: {files}")


if __name__ == "__main__":
    main()
