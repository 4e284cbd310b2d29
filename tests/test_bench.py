"""The benchmark code runs and reports what it says (no speed is asserted: timings are
measurements, taken by `make bench`, not tests)."""
from offbyone.bench import bench_attention, time_attention
from offbyone.pipeline import load_profile


def test_time_attention_reports_time_and_memory():
    r = time_attention("softmax1", "fast", T=32, B=1, H=2, D=8, repeats=2, warmup=1)
    assert r["median_ms"] > 0 and r["min_ms"] <= r["median_ms"]
    assert r["dtype"] == "float32" and r["T"] == 32
    assert r["peak_mib"] >= 0 and r["warmup_peak_mib"] >= 0


def test_bench_attention_in_subprocesses_with_ratios():
    rows = bench_attention([32], repeats=1, device="cpu", max_reference_gib=6.0)
    assert [r["variant"] for r in rows] == ["softmax", "softmax1", "sink", "softmax1"]
    assert all(r["time_ratio"] > 0 for r in rows)
    assert rows[0]["time_ratio"] == 1.0
    # memory children run with glibc's mmap threshold fixed (stable peak RSS), timings do not
    assert all(r["malloc_mmap_threshold"] == "131072" for r in rows)
    skipped = bench_attention([32], repeats=1, device="cpu", max_reference_gib=0.0)
    ref = [r for r in skipped if r["impl"] == "reference"]
    assert len(ref) == 1 and "skipped" in ref[0] and len(skipped) == 4


def test_profiles_bench_options_are_checked():
    assert load_profile("cpu")["bench"]["T"] == [256, 1024]
    assert load_profile("rivals")["bench"] == load_profile("cpu")["bench"]   # inherited
