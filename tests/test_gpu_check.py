"""make gpu-check: what it can do without a GPU (its refusal, the estimate, the written FLOP
count, the summary) and its whole flow on the CPU at toy sizes."""
import importlib
import json
import subprocess
import sys

import pytest
import torch

from offbyone import gpu_check as G

MEASURE = """measure:
  act_seqs: 2
  loss_seqs: 4
  calib_batches: 1
  calib_batch_size: 2
  windows: [4]
  keeps: [0]
"""
TINY = """variants: [softmax, softmax1]
seeds: [0, 1]
testbed: tb
ablations: [abl]
train:
  corpus: {corpus}
  n_layer: 1
  n_head: 2
  n_embd: 16
  block_size: 16
  batch_size: 4
  max_steps: 20
  warmup_steps: 2
  eval_interval: 10
  eval_batches: 2
  checkpoint_fractions: [0.5, 1.0]
""" + MEASURE
TB = """variants: [softmax, softmax1]
seeds: [0]
train:
  corpus: bigram_backcopy
  bos: true
  n_layer: 1
  n_head: 2
  n_embd: 16
  block_size: 16
  batch_size: 4
  max_steps: 30
  eval_interval: 30
  eval_batches: 1
  checkpoint_fractions: [1.0]
""" + MEASURE
ABL = "base: mini\nvariants: [softmax1]\ntrain:\n  weight_decay: 0.0\n"


@pytest.fixture
def mini(tmp_path, monkeypatch, tiny_corpus):
    (tmp_path / "configs").mkdir()
    (tmp_path / "lib" / "offbyone").mkdir(parents=True)
    for name, text in {"mini": TINY.replace("{corpus}", str(tiny_corpus)), "tb": TB, "abl": ABL}.items():
        (tmp_path / "configs" / f"{name}.yaml").write_text(text)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_without_cuda_it_exits_2_and_says_why(tmp_path):
    res = subprocess.run([sys.executable, "-m", "offbyone.gpu_check", "--out",
                          str(tmp_path / "c.json")], capture_output=True, text=True)
    assert res.returncode == G.NO_CUDA_EXIT == 2
    assert "needs a CUDA GPU" in res.stderr and "nvidia-smi" in res.stderr
    assert not (tmp_path / "c.json").exists()


def test_estimate_counts_every_run_stage_by_stage(mini):
    rates = {("mini", "softmax"): 100.0, ("mini", "softmax1"): 50.0,
             ("tb", "softmax"): 200.0, ("tb", "softmax1"): 200.0}
    measure_s = {"mini": (2.0, 3.0), "tb": (1.0, 1.5)}
    est = G.estimate("mini", rates, measure_s, notebook_s=5.0, bench_s=7.0, data_s=11.0,
                     report_s=13.0)
    tok = 20 * 4 * 16                     # steps x batch x context
    ev = (20 // 10 + 1) * 2 * 4 * 16 / 3  # three evaluations of two batches, forward only
    mini_train = 2 * ((tok + ev) / 100 + 5) + 2 * ((tok + ev) / 50 + 5)
    abl_train = 2 * ((tok + ev) / 50 + 5)  # the ablation runs at its main profile's rates
    tb_tok, tb_ev = 30 * 4 * 16, 2 * 1 * 4 * 16 / 3
    tb_train = 2 * ((tb_tok + tb_ev) / 200 + 5)
    assert est["stages_s"]["train"] == pytest.approx(mini_train + abl_train + tb_train)
    # mini and abl: a middle and the final checkpoint; tb: the final only; a notebook each
    assert est["stages_s"]["measure"] == pytest.approx(6 * (2 + 3 + 5) + 2 * (1.5 + 5))
    assert est["total_s"] == pytest.approx(sum(est["stages_s"].values()))
    assert {r["profile"]: r["runs"] for r in est["per_profile"]} == {"mini": 4, "tb": 2, "abl": 2}
    # parallel runs divide each profile's stages by its measured gain (the ablation: mini's)
    par = G.estimate("mini", rates, measure_s, 5.0, 7.0, 11.0, 13.0,
                     speedup={"mini": 2.0, "tb": 4.0}, jobs=4)
    assert par["stages_s"]["train"] == pytest.approx((mini_train + abl_train) / 2 + tb_train / 4)
    assert par["stages_s"]["data"] == 11.0 and par["jobs"] == 4
    with pytest.raises(KeyError, match="no measured rate"):
        G.estimate("mini", {("mini", "softmax"): 1.0}, measure_s, 1.0, 1.0)


def test_flop_count_is_nanogpts():
    # GPT-2 small at T = 1024 (nanoGPT's estimate_mfu): 6N + 12 L C T
    assert G.flops_per_token(124_000_000, 12, 768, 1024) == 6 * 124e6 + 12 * 12 * 768 * 1024


def test_flop_budget_takes_compute_or_overhead(mini):
    b = G.flop_budget("mini", peak_flops=1e12, utilisation=0.5, step_overhead_s=0.01,
                      n_params={"mini": 1000, "tb": 500, "abl": 1000})
    row = {r["profile"]: r for r in b["profiles"]}
    tokens = 4 * 20 * 4 * 16
    fpt = G.flops_per_token(1000, 1, 16, 16)
    assert row["mini"]["tokens"] == tokens and row["mini"]["flops"] == tokens * fpt
    assert row["mini"]["compute_s"] == pytest.approx(tokens * fpt / 0.5e12)
    assert row["mini"]["overhead_s"] == pytest.approx(4 * 20 * 0.01)
    # a step is bound by its FLOPs or by launching it, whichever is slower
    assert row["mini"]["train_s"] == max(row["mini"]["compute_s"], row["mini"]["overhead_s"])
    assert b["train_s"] == pytest.approx(sum(r["train_s"] for r in b["profiles"]))


def test_cpu_rehearsal_runs_every_step_and_writes_the_check(mini):
    out = mini / "results" / "gpu" / "check.json"
    G.main(["--cpu-rehearsal", "--profile", "mini", "--out", str(out), "--jobs", "2"])
    check = json.loads(out.read_text())
    assert check["cpu_rehearsal"] is True and "cuda_tests" not in check
    assert {r["variant"] for r in check["attention_bench"]} == {"softmax", "softmax1", "sink"}
    assert {(r["profile"], r["variant"]) for r in check["training"]} == {
        ("mini", "softmax"), ("mini", "softmax1"), ("tb", "softmax"), ("tb", "softmax1")}
    assert all(r["tokens_per_s"] > 0 for r in check["training"])
    assert [r["profile"] for r in check["training"] if "measure_final_s" in r] == ["mini", "tb"]
    assert [r["profile"] for r in check["parallel"]] == ["mini", "tb"]
    assert all(r["speedup"] > 0 and r["jobs"] == 2 for r in check["parallel"])
    assert [(r["variant"], r["ensemble_of"]) for r in check["ensemble"]] == [
        ("softmax", 2), ("softmax1", 2)]
    assert all(r["step_s"] > 0 for r in check["ensemble"])
    from offbyone.study import study_runs
    assert check["study_estimate"]["runs"] == len(study_runs("mini")) == 8
    assert check["study_estimate"]["total_s"] > 0
    est = check["estimate"]
    assert set(est["stages_s"]) == {"data", "train", "measure", "bench", "report"}
    assert est["jobs"] == 2 and check["estimate_one_job"]["jobs"] == 1
    # the estimate can be recomputed later from the file, without a GPU
    again = G.estimate_from(check)
    assert again["total_s"] == pytest.approx(est["total_s"])
    assert est["total_s"] > 0 and check["flop_budget"]["train_s"] > 0
    lines = G.summary_lines(check)
    assert any("estimated make reproduce PROFILE=mini" in l for l in lines)
    assert not list((mini / "build").glob("gpu-check-*"))  # the scratch runs are gone


def test_summary_flags_a_failed_kernel():
    check = {"provenance": {"device_name": "X", "torch": "2"}, "wall_s": 1.0,
             "cuda_tests": {"passed": False, "summary": "1 failed"},
             "kernel_errors": [{"ok": False, "max_err": 0.1, "tolerance": 0.03,
                                "kernel": "cuda_flash", "dtype": "bfloat16", "D": 64, "T": 7,
                                "variant": "sink", "softmax_kernel_max_err": 0.004}]}
    text = "\n".join(G.summary_lines(check))
    assert "CUDA tests: FAILED" in text and "0/1 within tolerance" in text


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kernel_error_helper_on_the_cpu_kernel_and_a_wrong_path(dtype, monkeypatch):
    """The helper the CUDA tests use, run on the CPU flash kernel: within tolerance and close to
    fused softmax's own error; a path that forgets the sink is caught."""
    r = G.kernel_errors("cpu_flash", dtype, 64, 100, "sink", device="cpu")
    assert r["ok"] and set(r) >= {"err_out", "err_dq", "err_dk", "err_dv", "err_ds"}
    assert r["max_err"] < 10 * r["softmax_kernel_max_err"] + 1e-6
    A = importlib.import_module("offbyone.attention")  # the package exports a function of that name
    monkeypatch.setattr(A, "sink_fused", lambda q, k, v, s, causal, scale, kernel:
                        torch.nn.functional.scaled_dot_product_attention(
                            q, k, v, is_causal=causal, scale=scale) + 0 * s.sum())
    wrong = G.kernel_errors("cpu_flash", dtype, 64, 100, "sink", device="cpu")
    assert not wrong["ok"] and wrong["err_out"] > 10 * wrong["tolerance"]


def test_the_fineweb_profile_fits_its_budget_on_the_measured_gpu():
    """configs/gpu_fineweb.yaml (the gpu profile until 2026-12-02, whose rates the committed
    check measured under that name) promises at most 30 minutes on one H100-class GPU with
    JOBS=4: the estimate from results/gpu/check.json for the profile as it is."""
    from offbyone.profiles import repo_root
    check = json.loads((repo_root() / "results" / "gpu" / "check.json").read_text())
    assert check["provenance"]["device_name"].startswith("NVIDIA")
    est = G.estimate_from(check, "gpu_fineweb", jobs=4)
    assert est["total_s"] <= 30 * 60, est["stages_s"]
    assert est["assumptions"]["variants at the slowest measured rate"] == []


def test_the_study_estimate_extrapolates_only_what_the_check_did_not_measure():
    """The gpu study (offbyone.study) on the committed check: its model was never trained
    there, so the step time is extrapolated from the measured utilisation and per-step
    overhead, and the estimate says so; every run of the study and its SGD control counted."""
    from offbyone.profiles import repo_root
    from offbyone.study import study_runs
    check = json.loads((repo_root() / "results" / "gpu" / "check.json").read_text())
    st = G.study_estimate(check, "gpu", jobs=4)
    # 10 seeds of 3 variants, 2 of 2 at each of two lower rates, 2 of SGD's softmax
    assert st["extrapolated"] and st["runs"] == len(study_runs("gpu")) == 30 + 4 + 4 + 2
    fb = check["flop_budget"]
    one = st["per_run"][0]
    assert one["how"] == "extrapolated"
    assert one["step_s"] == pytest.approx(fb["step_overhead_s"] * 3 / 2)   # launch-bound
    assert one["train_s"] == pytest.approx((3_000 + 13 * 5 / 3) * one["step_s"])
    assert st["speedup"] == pytest.approx([r for r in check["parallel"]
                                           if r["profile"] == "testbed_gpu"][0]["speedup"])
    assert st["total_s"] == pytest.approx(sum(st["stages_s"].values()))
    assert G.study_estimate(check, "gpu", jobs=1)["speedup"] == 1.0
    # a check that trained the profile's model gives the measured rate instead
    fresh = G.normalized(check)
    fresh["training"] = fresh["training"] + [dict(fresh["training"][0], profile="gpu",
                                                  tokens_per_s=16384 / 0.004)]
    measured = G.study_estimate(fresh, "gpu", jobs=4)
    assert measured["per_run"][0]["how"] == "measured"
    assert measured["per_run"][0]["step_s"] == pytest.approx(0.004)


def test_ensembles_share_the_launch_cost_in_the_estimate():
    """--ensemble 5: the 5 seeds of a variant share one step, so the launch-bound training time
    drops about five-fold; measured ensemble rows replace the extrapolation."""
    from offbyone.profiles import repo_root
    check = json.loads((repo_root() / "results" / "gpu" / "check.json").read_text())
    one = G.study_estimate(check, "gpu", jobs=4)
    ens = G.study_estimate(check, "gpu", jobs=4, ensemble=5)
    assert ens["runs"] == one["runs"] and ens["extrapolated"]
    r = {x["run"]: x for x in ens["per_run"]}
    assert r["gpu/softmax-s0"]["how"] == "extrapolated ensemble"
    single = {x["run"]: x for x in one["per_run"]}["gpu/softmax-s0"]
    group_step = 5 * r["gpu/softmax-s0"]["step_s"]          # one step of the five seeds
    assert single["step_s"] <= group_step < 5 * single["step_s"]
    assert r["gpu/softmax-s0"]["train_s"] == pytest.approx(
        single["train_s"] * group_step / single["step_s"] / 5)
    assert ens["train_s"] < one["train_s"] / 3
    fresh = G.normalized(check)
    fresh["ensemble"] = [{"profile": "gpu", "variant": "softmax", "ensemble_of": 5, "step_s": 0.02}]
    got = {x["run"]: x for x in G.study_estimate(fresh, "gpu", 4, 5)["per_run"]}
    assert got["gpu/softmax-s0"]["how"] == "measured ensemble"
    assert got["gpu/softmax-s0"]["step_s"] == pytest.approx(0.02 / 5)
    assert got["gpu/sink-s0"]["how"] == "extrapolated ensemble"


def test_old_checks_name_the_fineweb_profile_as_it_is_now():
    check = {"profile": "gpu", "training": [{"profile": "gpu"}, {"profile": "testbed_gpu"}],
             "parallel": [{"profile": "gpu"}]}
    n = G.normalized(check)
    assert n["profile"] == "gpu_fineweb" and n["training"][0]["profile"] == "gpu_fineweb"
    assert n["training"][1]["profile"] == "testbed_gpu" and n["parallel"][0]["profile"] == "gpu_fineweb"
    assert G.normalized(n) is n                                    # already current


def test_kernel_sweep_on_the_cpu_at_toy_sizes():
    """The sweep `make gpu-check` runs on an H200, here on the CPU kernel: every case timed with
    its quartiles, the summary against the fastest softmax, and a spent budget says so."""
    sweep = G.kernel_sweep((16, 40), (8,), B=1, H=2, repeats=3, device="cpu",
                           dtype=torch.float32)
    cases = {(r["variant"], r["route"], r["T"]) for r in sweep["rows"]}
    assert cases == {(v, r, T) for T in (16, 40) for v, r in
                     [("softmax", "FLASH_ATTENTION"), ("softmax1", "cpu_flash"), ("sink", "cpu_flash")]}
    for r in sweep["rows"]:
        assert r["repeats"] == 3 and 0 < r["q1_ms"] <= r["median_ms"] <= r["q3_ms"]
    summ = {(s["variant"], s["T"]): s for s in sweep["summary"]}
    assert set(summ) == {(v, T) for v in ("softmax1", "sink") for T in (16, 40)}
    s = summ[("sink", 40)]
    rows = {(r["variant"], r["T"]): r for r in sweep["rows"]}
    assert s["time_ratio"] == pytest.approx(rows[("sink", 40)]["median_ms"]
                                            / rows[("softmax", 40)]["median_ms"])
    assert s["default_route"] == s["fastest_route"] == "cpu_flash"
    text = "\n".join(G.summary_lines({"provenance": {}, "wall_s": 1.0, "kernel_sweep": sweep}))
    assert "sweep D=  8 T=    40 sink" in text
    spent = G.kernel_sweep((16,), (8,), B=1, H=2, repeats=1, device="cpu",
                           dtype=torch.float32, budget_s=0.0)
    assert all("spent" in r["skipped"] for r in spent["rows"]) and spent["summary"] == []


def test_an_optional_kernel_that_cannot_run_is_recorded_not_raised(monkeypatch):
    real = G.kernel_errors

    def fake(kernel, dtype, D, T, variant, **kw):
        if kernel == "cuda_cudnn":
            raise RuntimeError("cuDNN cannot run this\nmore")
        return real(kernel, dtype, D, T, variant, device="cpu")
    monkeypatch.setattr(G.kernels, "kernel_errors", fake)
    rows = G.kernel_error_table((7,), (16,), kernels=(("cpu_flash", torch.float32),),
                                optional=(("cuda_cudnn", torch.bfloat16),))
    assert [r["optional"] for r in rows] == [False, False, True, True]
    assert rows[0]["ok"] and rows[2] == {**rows[2], "ok": False, "error": "cuDNN cannot run this"}
    text = "\n".join(G.summary_lines({"provenance": {}, "wall_s": 1.0, "kernel_errors": rows}))
    assert "2 case(s) could not run" in text and "2/2 within tolerance" in text
    with pytest.raises(RuntimeError):
        G.kernel_error_table((7,), (16,), kernels=(("cuda_cudnn", torch.bfloat16),), optional=())


def test_the_compiled_training_ratio_reads_the_checks_own_profile():
    check = {"profile": "gpu", "training": [
        {"profile": "gpu", "variant": "softmax", "compile": True, "tokens_per_s": 100.0},
        {"profile": "gpu", "variant": "softmax1", "compile": True, "tokens_per_s": 97.0},
        {"profile": "gpu", "variant": "softmax1", "compile": False, "tokens_per_s": 50.0},
        {"profile": "gpu", "variant": "softmax", "compile": True, "tokens_per_s": 10.0,
         "compile_mode": "reduce-overhead"},
        {"profile": "testbed", "variant": "softmax1", "compile": True, "tokens_per_s": 1.0}]}
    assert G.compiled_training_ratio(check) == pytest.approx(0.97)
    assert G.compiled_training_ratio({"profile": "gpu", "training": []}) is None
