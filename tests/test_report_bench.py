"""The cost appendix's tables and macros from benchmark rows and a GPU kernel sweep."""
import pandas as pd
import pytest
import torch

from offbyone.report import bench as RB


def _attn(rows):
    base = {"impl": "fast", "median_ms": 1.0, "q1_ms": 0.9, "q3_ms": 1.1, "time_ratio": 1.0,
            "ratio_q1": 1.0, "ratio_q3": 1.0, "extra_us": 0.0, "label": "x", "B": 8}
    return pd.DataFrame([{**base, **r} for r in rows])


def test_speed_macros_read_the_target_lengths_and_the_overhead_at_the_shortest():
    attn = _attn([
        {"variant": "softmax", "T": 64}, {"variant": "softmax", "T": 256},
        {"variant": "softmax", "T": 1024},
        {"variant": "softmax1", "T": 64, "time_ratio": 1.3, "ratio_q3": 1.4, "extra_us": 480.0},
        {"variant": "softmax1", "T": 256, "time_ratio": 1.02, "ratio_q3": 1.04},
        {"variant": "softmax1", "T": 1024, "time_ratio": 1.01, "ratio_q3": 1.03},
        {"variant": "sink", "T": 64, "time_ratio": 1.5, "ratio_q3": 1.6, "extra_us": 900.0},
        {"variant": "sink", "T": 256, "time_ratio": 1.046, "ratio_q3": 1.07},
        {"variant": "sink", "T": 1024, "time_ratio": 1.01, "ratio_q3": 1.02},
        {"variant": "softmax1", "T": 256, "impl": "reference", "time_ratio": 3.0}])
    M = RB.speed_macros(attn)
    # a bench without the block_s column ran with the first value, 0.2 s; one with it says
    assert M["BenchHasIQR"] == "1" and M["BenchBlockS"] == "0.2" and M["BenchBatch"] == "$B = 8$"
    assert RB.speed_macros(attn.assign(block_s=1.0))["BenchBlockS"] == "1"
    # passes a round at least: 1 where the column is absent
    assert M["BenchMinPasses"] == "1"
    assert RB.speed_macros(attn.assign(min_passes=6))["BenchMinPasses"] == "6"
    assert (M["BenchSoftmaxOneTargetWorstRatio"], M["BenchSoftmaxOneTargetWorstT"]) == ("1.020", "256")
    assert M["BenchSoftmaxOneTargetMet"] == "1"          # upper quartiles 1.04, 1.03
    assert (M["BenchSinkTargetWorstRatio"], M["BenchSinkTargetWorstT"]) == ("1.046", "256")
    assert M["BenchSinkTargetMet"] == "0"                # upper quartile 1.07 at T = 256
    assert (M["BenchSinkTargetMissTs"], M["BenchSoftmaxOneTargetMissTs"]) == ("256", "none")
    assert (M["BenchSoftmaxOneOverheadUs"], M["BenchSinkOverheadUs"], M["BenchOverheadT"]) == \
        ("480", "900", "64")
    old = RB.speed_macros(attn.drop(columns=["ratio_q1", "ratio_q3", "extra_us", "q1_ms", "q3_ms"]))
    assert old["BenchHasIQR"] == "0" and old["BenchSinkOverheadUs"] == "n/a"


def test_allocator_macros_read_the_rows_and_default_for_older_benches():
    attn = _attn([{"variant": "softmax", "T": 64, "faults_per_pass": 0.0},
                  {"variant": "sink", "T": 64, "faults_per_pass": 3.0},
                  {"variant": "softmax1", "T": 64, "impl": "reference", "faults_per_pass": 900.0}])
    M = RB.speed_macros(attn.assign(steady_allocator=True))
    # the fused cases' worst median, not the reference's
    assert (M["BenchSteadyAllocator"], M["BenchFaultsMax"]) == ("1", "3")
    assert M["BenchFaultsText"] == "at most 3 minor page faults"
    none = RB.speed_macros(attn.assign(steady_allocator=True, faults_per_pass=0.0))
    assert none["BenchFaultsText"] == "no minor page fault"
    assert RB.speed_macros(attn.assign(steady_allocator=False))["BenchSteadyAllocator"] == "0"
    old = RB.speed_macros(attn.drop(columns=["faults_per_pass"]))
    assert (old["BenchSteadyAllocator"], old["BenchFaultsMax"]) == ("0", "n/a")


def test_time_table_prints_quartiles_when_there_are_some(tmp_path):
    attn = _attn([{"variant": "softmax", "T": 64},
                  {"variant": "sink", "T": 64, "time_ratio": 1.2, "ratio_q1": 1.1,
                   "ratio_q3": 1.3, "extra_us": 250.0}])
    RB.time_table(attn, tmp_path / "t.tex")
    text = (tmp_path / "t.tex").read_text()
    assert "$1.200$ & $1.100$--$1.300$ & $250$" in text and "sink & $64$ & $8$ &" in text
    RB.time_table(attn.drop(columns=["ratio_q1", "ratio_q3", "q1_ms", "q3_ms"]), tmp_path / "o.tex")
    assert "--$" not in (tmp_path / "o.tex").read_text()


def test_sweep_outputs_from_a_cpu_sweep_and_without_one(tmp_path):
    from offbyone.gpu_check import kernel_sweep
    sweep = kernel_sweep((16, 300), (8,), B=1, H=2, repeats=2, device="cpu", dtype=torch.float32)
    table, figure = tmp_path / "sweep.tex", tmp_path / "sweep.pdf"
    M = RB.sweep_outputs(sweep, {"device_name": "cpu", "git_sha": "abc123"}, table, figure)
    assert M["BenchGpuSweep"] == "1" and table.exists() and figure.exists()
    assert "& flash & $" in table.read_text()   # the fastest softmax, then the route
    RB.memory_table(pd.DataFrame([{"variant": "softmax", "impl": "fast", "T": 64, "median_ms": 1.0,
                                   "peak_mib": 5.0, "memory_ratio": 1.0, "label": "x", "B": 2}]),
                    tmp_path / "m.tex")
    assert "$64$ & $2$ & $5.00$ ($\\times1.00$)" in (tmp_path / "m.tex").read_text()
    worst = max(s["time_ratio"] for s in sweep["summary"])
    assert M["BenchGpuWorstRatio"] == f"{worst:.3f}"
    at_target = [s["time_ratio"] for s in sweep["summary"] if s["T"] >= RB.TARGET_MIN_T]
    assert M["BenchGpuTargetMet"] == ("1" if max(at_target) <= RB.TARGET_RATIO else "0")
    assert M["BenchGpuWorstMemoryRatio"] == "n/a"      # no allocator peak on the CPU
    assert RB.sweep_outputs(None, {}, table, figure) == {"BenchGpuSweep": "0"}
    assert not table.exists() and not figure.exists()   # an older build's do not linger


def test_load_sweep_without_a_check(tmp_path):
    assert RB.load_sweep(tmp_path / "check.json") == (None, {})
    (tmp_path / "check.json").write_text('{"provenance": {"git_sha": "x"}}')
    assert RB.load_sweep(tmp_path / "check.json") == (None, {"git_sha": "x"})


def test_log_tick_labels_have_no_exponent():
    from offbyone.report.figures import _plain
    assert [_plain(x) for x in (5000.0, 2000.0, 500.0, 7.25, 0.5)] == \
        ["5000", "2000", "500", "7.25", "0.5"]


def test_batch_text_names_each_batch_size_with_its_lengths():
    attn = _attn([{"variant": "softmax", "T": 64}, {"variant": "sink", "T": 256},
                  {"variant": "softmax", "T": 1024, "B": 4}, {"variant": "sink", "T": 4096, "B": 1},
                  {"variant": "softmax1", "T": 4096, "B": 1},
                  {"variant": "softmax1", "T": 8192, "B": 1, "median_ms": float("nan")}])
    assert RB.batch_text(attn) == ("$B = 8$ at $T =$ $64$ and $256$; $4$ at $T =$ $1{,}024$; "
                                   "$1$ at $T =$ $4{,}096$")   # the skipped row does not count
    assert RB.batch_text(attn[attn["T"] < 1024]) == "$B = 8$"
    assert RB.speed_macros(attn)["BenchBatchVaries"] == "1"
    assert RB.speed_macros(attn[attn["T"] < 1024])["BenchBatchVaries"] == "0"
