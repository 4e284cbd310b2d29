import json
import re
import subprocess
import sys
from pathlib import Path

import math
import pandas as pd
import papermill as pm
import pytest

from offbyone import report as R
from offbyone.config import ConfigError
from offbyone.profiles import load_profile, run_config, runs

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def test_notebooks_are_clean_and_parameterised():
    assert len(NOTEBOOKS) == 5
    for path in NOTEBOOKS:
        nb = json.loads(path.read_text())
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        assert "parameters" in code[0]["metadata"].get("tags", []), path.name
        assert not any(c.get("outputs") or c.get("execution_count") for c in code), path.name
        # the cell after the parameters refuses unknown or mistyped parameters
        assert "check_parameters(globals())" in "".join(code[1]["source"]), path.name


def test_makefile_passes_only_declared_parameters():
    make = (REPO / "Makefile").read_text().replace("\\\n", " ")
    calls = re.findall(r"\$\(call RUN_NB,\w+,(\w+)\)(.*)", make)
    calls += re.findall(r"offbyone.pipeline nb \w+ notebooks/(\w+)\.ipynb \S+(.*)", make)
    assert {c[0] for c in calls} >= {"01_prepare_data", "02_train", "03_measure", "04_report"}
    for name, rest in calls:
        declared = pm.inspect_notebook(str(REPO / "notebooks" / f"{name}.ipynb"))
        passed = re.findall(r"-p (\w+)", rest)
        if "profiles data-params" in rest:          # the profile's data keys, printed as -p options
            from offbyone.profiles import data_params
            passed += list(data_params("cpu"))
        assert passed, name
        for p in passed:
            assert p in declared, f"Makefile passes {p!r} to {name}, which takes {list(declared)}"


@pytest.mark.parametrize("params,message", [
    ({"corpus": "shakespeare", "data_rot": "x"}, "unknown notebook parameter(s) 'data_rot'"),
    ({"data_root": 3}, "notebook parameter 'data_root' must be of type str"),
])
def test_notebook_refuses_bad_parameters_before_work(tmp_path, params, message):
    out = tmp_path / "out.ipynb"
    with pytest.raises(pm.PapermillExecutionError) as e:
        pm.execute_notebook(str(REPO / "notebooks" / "01_prepare_data.ipynb"), str(out),
                            parameters=params, kernel_name="python3", progress_bar=False,
                            cwd=str(REPO))
    assert message in str(e.value)
    nb = json.loads(out.read_text())
    ran = [c for c in nb["cells"] if c["cell_type"] == "code" and c.get("execution_count")]
    assert len(ran) == 3       # parameters, injected parameters, and the check that failed


def test_runner_refuses_undeclared_parameter_without_starting_a_kernel(tmp_path):
    res = subprocess.run([sys.executable, "-m", "offbyone.pipeline", "nb", "report",
                          "notebooks/04_report.ipynb", str(tmp_path / "x.ipynb"),
                          "-p", "profil", "smoke"], capture_output=True, text=True, cwd=REPO)
    assert res.returncode != 0 and "takes no parameter(s) ['profil']" in res.stderr
    assert not (tmp_path / "x.ipynb").exists()


def test_profiles_are_valid_and_runs_are_paired():
    for name in ("smoke", "cpu", "gpu", "gpu_fineweb", "rivals", "pilot_guo"):
        prof = load_profile(name)
        assert "softmax" in prof["variants"] and "softmax1" in prof["variants"]
        pairs = runs(name)
        assert len(pairs) == len(prof["variants"]) * len(prof["seeds"])
        a = run_config(name, "softmax", prof["seeds"][0])
        b = run_config(name, "softmax1", prof["seeds"][0])
        diff = {k for k, v in a.to_dict().items() if b.to_dict()[k] != v}
        assert diff == {"attention", "out_dir"}     # same seed, data order and recipe
    assert len(load_profile("cpu")["seeds"]) >= 3
    with pytest.raises(ConfigError, match="valid profiles: cpu, cpu_bpe, gpu, gpu_fineweb, gpu_lr1e-3, gpu_lr3e-3, gpu_sgd, gpu_wd01, pilot_guo, retrofit, retrofit_outliers, "):
        load_profile("laptop")


def test_paired_difference_and_generated_sentences():
    fin = pd.DataFrame({"variant": ["softmax"] * 3 + ["softmax1"] * 3, "seed": [0, 1, 2] * 2,
                        "m": [10.0, 11.0, 12.0, 8.0, 9.2, 9.9]})
    r = R.paired_difference(fin, "m", "softmax1")
    d = [-2.0, -1.8, -2.1]
    assert r["diff"] == pytest.approx(sum(d) / 3) and r["n"] == 3
    sd = pd.Series(d).std()
    half = 4.302652729911275 * sd / math.sqrt(3)          # t_{0.975, 2}
    assert r["ci_low"] == pytest.approx(r["diff"] - half) and r["ci_high"] == pytest.approx(r["diff"] + half)
    assert r["p"] < 0.01 and "significant" not in r            # exploratory: no flag
    s = R.effect_sentence(r, "average kurtosis")
    assert s.startswith("the average kurtosis of softmax1 minus softmax: $-1.97$") and "95\\% CI" in s
    noisy = fin.copy()
    noisy.loc[3:, "m"] = [12.0, 9.0, 12.5]
    r2 = R.paired_difference(noisy, "m", "softmax1")
    assert r2["ci_low"] < 0 < r2["ci_high"]
    assert "exploratory" in R.effect_sentence(r2, "average kurtosis")
    one = R.paired_difference(fin[fin.seed == 0], "m", "softmax1")
    assert "no test" in R.effect_sentence(one, "x")
    missing = fin.copy()
    missing.loc[4:, "m"] = float("nan")
    assert R.paired_difference(missing, "m", "softmax1")["n"] == 1


def test_macros_and_numbers():
    assert R.macro_name("gap", "W8A8", "softmax1") == "GapWEightAEightSoftmaxOne"
    assert R.fmt(1234.5678) == "1{,}235" and R.fmt(0.012345) == "0.0123"
    assert R.fmt(float("nan")) == "n/a" and R.pct(1.0) == "100.0\\%"
    with pytest.raises(ValueError, match="letters only"):
        R.write_macros({"Bad1": "x"}, "/tmp/never.tex")


def test_results_file_of_another_version_is_refused_by_name(tmp_path, monkeypatch):
    import offbyone.profiles as P
    root = tmp_path
    (root / "configs").mkdir()
    (root / "lib" / "offbyone").mkdir(parents=True)
    (root / "configs" / "mini.yaml").write_text("variants: [softmax]\nseeds: [0]\n")
    monkeypatch.chdir(root)
    run = P.run_dir("mini", "softmax", 0)
    run.mkdir(parents=True)
    (run / "ckpt_000010.metrics.json").write_text(json.dumps({"format": "offbyone-metrics",
                                                             "version": 0}))
    (run / "measurements.json").write_text(json.dumps(
        {"files": ["runs/mini/softmax-s0/ckpt_000010.metrics.json"]}))
    with pytest.raises(ValueError, match="ckpt_000010.metrics.json is a results file of another"):
        R.collect("mini")


def _profiles_in(tmp_path, monkeypatch, profiles: dict):
    """A throwaway repository root holding the given profiles; returns offbyone.profiles."""
    import offbyone.profiles as P
    (tmp_path / "configs").mkdir()
    (tmp_path / "lib" / "offbyone").mkdir(parents=True)
    for name, text in profiles.items():
        (tmp_path / "configs" / f"{name}.yaml").write_text(text)
    monkeypatch.chdir(tmp_path)
    return P


def test_testbed_profiles_are_named_checked_and_paired(tmp_path, monkeypatch):
    for name, tb in (("cpu", "testbed"), ("smoke", "testbed_smoke"), ("rivals", "testbed_rivals"),
                     ("gpu_fineweb", "testbed_gpu")):
        assert load_profile(name)["testbed"] == tb
        prof = load_profile(tb)
        assert prof["train"]["corpus"] == "bigram_backcopy" and prof["train"]["bos"] is True
        a = run_config(tb, "softmax", prof["seeds"][0]).to_dict()
        b = run_config(tb, "softmax1", prof["seeds"][0]).to_dict()
        assert {k for k in a if a[k] != b[k]} == {"attention", "out_dir"}
    assert len(load_profile("testbed")["seeds"]) >= 3
    one = "variants: [softmax]\nseeds: [0]\n"
    P = _profiles_in(tmp_path, monkeypatch, {"a": one + "testbed: a\n", "b": one + "testbed: c\n",
                                             "c": one + "testbed: d\n", "d": one,
                                             "e": one + "testbed: nope\n"})
    with pytest.raises(ConfigError, match="testbed must name another profile"):
        P.load_profile("a")
    with pytest.raises(ConfigError, match="may not have a testbed itself"):
        P.load_profile("b")
    with pytest.raises(ConfigError, match="unknown profile 'nope'"):
        P.load_profile("e")
    assert P.load_profile("c")["testbed"] == "d"


def test_ablation_profiles_change_one_key_and_are_checked(tmp_path, monkeypatch):
    assert load_profile("gpu_fineweb")["ablations"] == ["gpu_wd01"]
    a = run_config("gpu_fineweb", "softmax", 0).to_dict()
    b = run_config("gpu_wd01", "softmax", 0).to_dict()
    assert {k for k in a if a[k] != b[k]} == {"weight_decay", "out_dir"}
    # the GPU study's control: the same model and data, SGD instead of AdamW
    assert load_profile("gpu")["ablations"] == ["gpu_lr1e-3", "gpu_lr3e-3", "gpu_sgd"]
    a, b = run_config("gpu", "softmax", 0).to_dict(), run_config("gpu_sgd", "softmax", 0).to_dict()
    assert {k for k in a if a[k] != b[k]} == {"optimizer", "lr", "min_lr", "out_dir"}
    # and the two exploratory rates below its dose: the learning rate alone
    for name, lr in (("gpu_lr1e-3", 1e-3), ("gpu_lr3e-3", 3e-3)):
        b = run_config(name, "softmax", 0).to_dict()
        assert {k for k in a if a[k] != b[k]} == {"lr", "min_lr", "out_dir"} and b["lr"] == lr
    assert load_profile("smoke")["ablations"] == ["smoke_wd"]
    one = "variants: [softmax]\nseeds: [0]\n"
    P = _profiles_in(tmp_path, monkeypatch, {"m": one + "ablations: [n]\n",
                                             "n": "base: m\ntrain: {weight_decay: 0.3}\n",
                                             "o": one + "ablations: o\n", "q": one + "ablations: [m]\n"})
    assert P.load_profile("m")["ablations"] == ["n"]            # a base may list its ablation
    assert P.load_profile("n")["train"]["weight_decay"] == 0.3
    with pytest.raises(ConfigError, match="ablations must be a list of other profiles' names"):
        P.load_profile("o")
    with pytest.raises(ConfigError, match="ablation profile 'm' may not have a testbed or ablations"):
        P.load_profile("q")


def test_bench_options_are_checked(tmp_path, monkeypatch):
    one = "variants: [softmax]\nseeds: [0]\n"
    P = _profiles_in(tmp_path, monkeypatch, {
        "ok": one + "bench: {T: [64], variants: [softmax, sink]}\n",
        "typo": one + "bench: {Ts: [64]}\n",
        "badv": one + "bench: {variants: [softmax2]}\n",
        "notlist": one + "bench: {variants: softmax}\n",
        "zerotok": one + "bench: {max_tokens: 0}\n",
        "tok": one + "bench: {max_tokens: 4096}\n",
        "zeroblock": one + "bench: {block_s: 0}\n",
        "halfpass": one + "bench: {min_passes: 2.5}\n",
        "passes": one + "bench: {min_passes: 5}\n"})
    with pytest.raises(ConfigError, match="bench min_passes must be a positive integer"):
        P.load_profile("halfpass")
    assert P.load_profile("passes")["bench"]["min_passes"] == 5
    with pytest.raises(ConfigError, match="bench block_s must be a positive number of seconds"):
        P.load_profile("zeroblock")
    assert P.load_profile("tok")["bench"]["max_tokens"] == 4096
    with pytest.raises(ConfigError, match="bench max_tokens must be a positive integer"):
        P.load_profile("zerotok")
    assert P.load_profile("ok")["bench"]["variants"] == ["softmax", "sink"]
    with pytest.raises(ConfigError, match="unknown bench key.*valid keys: T, repeats, max_repeats, budget_s, max_tokens, block_s, min_passes, steps, variants"):
        P.load_profile("typo")
    for name in ("badv", "notlist"):
        with pytest.raises(ConfigError, match="bench variants must be a non-empty list of softmax, softmax1"):
            P.load_profile(name)


def test_a_rehearsal_is_the_profile_with_only_its_costly_sizes_cut():
    from offbyone.profiles import REHEARSAL_CUTS, profile_path, rehearsal_of
    real, reh = load_profile("gpu_fineweb"), load_profile("gpu_fineweb-rehearsal")
    assert rehearsal_of("gpu_fineweb-rehearsal") == "gpu_fineweb" and rehearsal_of("gpu_fineweb") is None
    assert reh["variants"] == real["variants"] and reh["seeds"] == real["seeds"]
    assert reh["testbed"] == "testbed_gpu-rehearsal" and reh["ablations"] == ["gpu_wd01-rehearsal"]
    cut = {k for part in REHEARSAL_CUTS.values() for k in part}
    for key in set(real["train"]) | set(reh["train"]):
        if key not in cut:   # model, tokenizer, corpus and its fallback, recipe: the profile's own
            assert reh["train"].get(key) == real["train"].get(key), key
    assert reh["train"]["max_steps"] < real["train"]["max_steps"]
    assert reh["measure"]["loss_seqs"] < real["measure"]["loss_seqs"]
    assert max(reh["bench"]["T"]) < max(real["bench"]["T"])
    tb = load_profile("testbed_gpu-rehearsal")
    assert tb["variants"] == load_profile("testbed_gpu")["variants"]
    # its own folders: runs/gpu-rehearsal/..., never a real profile's
    assert run_config("gpu_fineweb-rehearsal", "softmax", 0).out_dir.endswith("runs/gpu_fineweb-rehearsal/softmax-s0")
    assert "rehearsal" in reh["description"] and "mean nothing" in reh["description"]
    with pytest.raises(ConfigError, match="unknown profile 'nope'"):
        load_profile("nope-rehearsal")
    assert profile_path("gpu").name == "gpu.yaml"
    quick = load_profile("gpu_fineweb-quickrehearsal")   # CI's cut form
    assert quick["variants"] == real["variants"][:2] and quick["seeds"] == real["seeds"][:1]
    assert quick["testbed"] == "testbed_gpu-quickrehearsal"
    assert load_profile("testbed_gpu-quickrehearsal")["seeds"] == [0]
    assert quick["train"] == reh["train"] and rehearsal_of("gpu_fineweb-quickrehearsal") == "gpu_fineweb"


def test_plain_text_is_escaped_for_latex():
    from offbyone.report import latex_escape
    assert latex_escape("testbed_gpu: 50% of #1 & $x {y}") == \
        r"testbed\_gpu: 50\% of \#1 \& \$x \{y\}"
    assert latex_escape("a\\b ~c ^d") == r"a\textbackslash{}b \textasciitilde{}c \textasciicircum{}d"


def test_macro_names_spell_every_digit_and_never_collide():
    from offbyone.report import macro_name
    names = [macro_name("Win", "ppl", "k", str(k), "softmax1") for k in range(10)]
    assert len(set(names)) == 10 and all(n.isalpha() for n in names)
    assert macro_name("Win", "ppl", "k", "3", "softmax") == "WinPplKThreeSoftmax"
    assert macro_name("gap", "W8A8") == "GapWEightAEight"     # unchanged for the digits in use


def test_cited_profiles_are_read_not_run():
    from offbyone.profiles import load_profile
    assert load_profile("cpu")["cited"] == ["testbed_long", "retrofit"]
    assert "cited" not in load_profile("cpu-rehearsal")         # a rehearsal cites nothing real
    long = load_profile("testbed_long")
    base = load_profile("testbed")["train"]
    assert long["train"]["max_steps"] >= 3 * base["max_steps"]
    schedule = ("max_steps", "warmup_steps", "eval_interval", "log_interval")
    assert ({k: v for k, v in long["train"].items() if k not in schedule}
            == {k: v for k, v in base.items() if k not in schedule})   # the testbed's recipe
    assert long["variants"] == ["softmax", "softmax1", "sink"] and len(long["seeds"]) >= 5


def test_make_clean_removes_only_what_the_build_made(tmp_path):
    """Committed results are data: `make clean` keeps them and removes runs, build outputs,
    rehearsals' results and results folders that git does not track."""
    import shutil
    import subprocess
    from offbyone.profiles import repo_root
    shutil.copy(repo_root() / "Makefile", tmp_path / "Makefile")
    for f in ("results/cpu/runs.csv", "results/smoke/runs.csv", "results/gpu-quickrehearsal/a.csv",
              "runs/cpu/softmax-s0/log.jsonl", "build/paper/x.pdf", "paper/generated/macros.tex",
              "configs/cpu.yaml"):
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).write_text("x")
    git = lambda *a: subprocess.run(["git", *a], cwd=tmp_path, check=True, capture_output=True)  # noqa: E731
    git("init", "-q")
    git("add", "results/cpu", "configs", "Makefile")
    subprocess.run(["make", "clean"], cwd=tmp_path, check=True, capture_output=True)
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")
                  if p.is_file() and ".git" not in p.parts)
    assert left == ["Makefile", "configs/cpu.yaml", "results/cpu/runs.csv"]


def test_retrofit_profiles_start_each_run_from_its_seeds_source(tmp_path, monkeypatch):
    # the committed profile: testbed_long's softmax runs, continued as three variants
    prof = load_profile("retrofit")
    assert prof["retrofit"] == {"from": "testbed_long", "variant": "softmax"}
    for v in prof["variants"]:
        cfg = run_config("retrofit", v, 3)
        assert cfg.init_from.endswith("runs/testbed_long/softmax-s3/ckpt_003000.pt")
        assert cfg.checkpoint_steps()[0] == 0 and cfg.max_steps == 300
    a, b = run_config("retrofit", "softmax", 0).to_dict(), run_config("testbed_long", "softmax", 0).to_dict()
    changed = {k for k in a if a[k] != b[k]}
    assert changed <= {"out_dir", "init_from", "max_steps", "warmup_steps", "lr", "min_lr",
                       "eval_interval", "log_interval", "checkpoint_fractions"}
    # a rehearsal starts from the rehearsed source's rehearsal
    assert run_config("retrofit-quickrehearsal", "softmax", 0).init_from.endswith(
        "runs/testbed_long-quickrehearsal/softmax-s0/ckpt_000004.pt")
    out = subprocess.run([sys.executable, "-m", "offbyone.profiles", "sources", "retrofit"],
                         cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    assert out == ["testbed_long"] + [f"softmax-s{s}" for s in prof["seeds"]]
    one = "variants: [softmax, softmax1]\nseeds: [0, 1]\n"
    P = _profiles_in(tmp_path, monkeypatch, {
        "src": one, "ok": one + "retrofit: {from: src, variant: softmax}\n",
        "self": one + "retrofit: {from: self, variant: softmax}\n",
        "var": one + "retrofit: {from: src, variant: sink}\n",
        "seeds": "variants: [softmax1]\nseeds: [0, 5]\nretrofit: {from: src, variant: softmax}\n",
        "keys": one + "retrofit: {from: src}\n",
        "chain": one + "retrofit: {from: ok, variant: softmax}\n",
        "both": one + "retrofit: {from: src, variant: softmax}\ntrain: {init_from: x.pt}\n"})
    assert P.run_config("ok", "softmax1", 1).init_from.endswith("runs/src/softmax-s1/ckpt_001500.pt")
    assert P.run_config("src", "softmax1", 1).init_from == ""
    for name, message in (("self", "cannot start from its own runs"),
                          ("var", "variant 'sink' is not in profile 'src'"),
                          ("seeds", r"seeds \[5\] have no run in 'src'"),
                          ("keys", "retrofit must be a mapping of from, variant"),
                          ("chain", "is itself a retrofit"),
                          ("both", "set retrofit, not train.init_from")):
        with pytest.raises(ConfigError, match=message):
            P.load_profile(name)
