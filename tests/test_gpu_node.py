"""The GPU node's one script (python -m offbyone.gpu_check.node, make gpu-node): its stages in
order under their limits, on the CPU at toy sizes, and what it hands back."""
import json
import tarfile

import pytest

from offbyone.gpu_check import node as N
from test_gpu_check import mini  # noqa: F401  (the toy repository the check's tests use)


def test_the_limits_fit_eleven_minutes_and_keep_the_issues_order():
    assert [s for s, _ in N.STAGES] == ["smoke", "study", "sweep"]
    limits = dict(N.STAGES)
    assert limits["study"] <= 7 * 60 and limits["sweep"] <= 3 * 60
    assert N.TOTAL_LIMIT_S == sum(limits.values()) <= 11 * 60


@pytest.mark.slow
def test_every_stage_runs_on_the_cpu_and_four_files_come_back(mini):  # noqa: F811
    out = mini / "out"
    rec = N.run_node(out, "mini", cpu=True, jobs=1, ensemble=1)
    assert [(s["stage"], s["status"]) for s in rec["stages"]] == [
        ("smoke", "ok"), ("study", "ok"), ("sweep", "ok")]
    assert all(0 < s["wall_s"] <= s["limit_s"] for s in rec["stages"])
    assert sorted(p.name for p in out.iterdir()) == ["check.json", "node.json", "node.log",
                                                      "study.tar.gz"]
    assert json.loads((out / "node.json").read_text())["stages"] == json.loads(
        json.dumps(rec["stages"]))
    check = json.loads((out / "check.json").read_text())
    assert check["cpu_rehearsal"] is True and "cuda_tests" not in check
    assert [r["variant"] for r in check["smoke"]] == ["softmax", "softmax1"]
    assert all(r["steps"] == N.SMOKE_STEPS and r["tokens_per_s"] > 0 for r in check["smoke"])
    sweep = check["kernel_sweep"]
    assert sweep["device"] == "cpu" and {r["variant"] for r in sweep["rows"]} == {
        "softmax", "softmax1", "sink"} and sweep["summary"]
    assert [r["variant"] for r in check["training"]] == ["softmax", "softmax1"]
    assert check["training"][0]["ratio_to_softmax"] == 1.0
    # the study's archive holds the cut profile's every run, and unpacks
    with tarfile.open(out / "study.tar.gz") as tar:
        names = tar.getnames()
    assert any("mini-quickrehearsal/softmax1-s0" in n for n in names)
    from offbyone.study import unpack
    assert unpack(out / "study.tar.gz")["missing"] == []
    # a rerun finds the study done and trains nothing again
    again = N.run_node(mini / "out2", "mini", cpu=True, jobs=1, ensemble=1,
                       limits={"smoke": 60, "study": 60, "sweep": 1})
    assert [s["status"] for s in again["stages"]] == ["ok", "ok", "timed out"]
    assert "0 to run" in (mini / "out2" / "node.log").read_text()


def test_a_smoke_cut_at_its_limit_stops_the_script(mini):  # noqa: F811
    rec = N.run_node(mini / "out", "mini", cpu=True, jobs=1, ensemble=1, limits={"smoke": 0.5})
    assert [(s["stage"], s["status"]) for s in rec["stages"]] == [("smoke", "timed out")]
    assert json.loads((mini / "out" / "node.json").read_text())["stages"][0]["status"] == "timed out"
    assert "==> [node] smoke" in (mini / "out" / "node.log").read_text()
    assert not (mini / "out" / "study.tar.gz").exists()
