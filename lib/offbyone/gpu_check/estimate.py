"""The budget: the written FLOP count of a profile's training, and the wall-time estimate of
`make reproduce` and of `python -m offbyone.study run` from the rates a check measured."""
from __future__ import annotations

from ..ensemble import ensemble_groups
from ..profiles import load_profile, model_params, run_config
from ..study import study_runs

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

    main = load_profile(profile)
    rows = []
    for name in [profile] + [p for p in [main.get("testbed")] + (main.get("ablations") or []) if p]:
        prof = load_profile(name)
        cfg = run_config(name, prof["variants"][0], prof["seeds"][0])
        if n_params and name in n_params:
            n = n_params[name]
        else:
            n = model_params(cfg)
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
            n = model_params(cfg)
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
                n = model_params(cfg)
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
