"""A check in words: the summary printed after a check, and the estimates printed from a saved
one (--estimate-from)."""
from __future__ import annotations

from ..profiles import load_profile
from .estimate import compiled_training_ratio, estimate_from, flop_budget, model_sizes, study_estimate


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


def print_estimates(check: dict, profile: str, jobs: int) -> None:
    """The study runner's estimate for `profile`, and the notebook pipeline's where the check
    measured that profile's model (with the written FLOP count of its training)."""
    for e in sorted({1, 5, len(load_profile(profile)["seeds"])}):   # and all its seeds at once
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
