"""The one-process-per-stage study runner (offbyone.study): device slots, resumable runs, the
archive a node hands back and its unpacking on the CPU machine."""
import json
import tarfile

import pytest

from offbyone import study as S
from offbyone.profiles import load_profile, runs

PROFILE = "testbed_smoke"          # 4 tiny runs (2 variants x 2 seeds, 30 steps)


def test_device_slots_spread_over_gpus():
    assert S.assign_devices(4, ["cuda:0", "cuda:1"]) == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]
    assert S.assign_devices(3, ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]) == ["cuda:0", "cuda:1", "cuda:2"]
    assert S.assign_devices(2, ["cpu"]) == ["cpu", "cpu"]
    with pytest.raises(S.StudyError, match="jobs must be >= 1"):
        S.assign_devices(0, ["cpu"])
    with pytest.raises(S.StudyError, match="devices must be"):
        S.available_devices("gpu0")
    assert S.available_devices("cuda:0,cuda:1") == ["cuda:0", "cuda:1"]


def test_study_runs_list_the_companions():
    got = S.study_runs("smoke")
    names = {n for n, _, _ in got}
    assert names == {"smoke", "testbed_smoke", "smoke_wd"}
    assert len(got) == sum(len(runs(n)) for n in names)


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    runs_root = str(root / "runs")
    archive = root / "study.tar.gz"
    out = S.run_study(PROFILE, jobs=2, devices="cpu", archive=str(archive), runs_root=runs_root,
                      threads=1, log=lambda *a: None)
    return root, runs_root, archive, out


def test_a_study_runs_measures_and_archives_every_run(finished_study):
    root, runs_root, archive, out = finished_study
    assert out["missing_runs"] == [] and out["finished_runs"] == 4
    assert [st["stage"] for st in out["stages"]] == ["data", "train and measure"]
    assert out["slots"] == ["cpu", "cpu"]
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        study = json.loads(tar.extractfile("study.json").read())
    assert study["format"] == S.STUDY_FORMAT and study["missing_runs"] == []
    assert not any(n.endswith(".pt") for n in names)                  # no checkpoints
    for v, s in runs(PROFILE):
        base = f"runs/{PROFILE}/{v}-s{s}/"
        assert {base + f for f in S.RECORD_FILES} <= set(names)
        assert sum(n.startswith(base) and n.endswith(".metrics.json") for n in names) == 2
    assert archive.stat().st_size < S.ARCHIVE_LIMIT


def test_a_rerun_skips_finished_runs_and_reports_missing_ones(finished_study, tmp_path):
    root, runs_root, archive, _ = finished_study
    again = S.run_study(PROFILE, jobs=1, devices="cpu", archive=str(tmp_path / "a.tar.gz"),
                        runs_root=runs_root, log=lambda *a: None)
    assert again["runs"] == [] and again["missing_runs"] == []
    # a run whose record is incomplete is missing, and the archive says so
    index = S.run_folder(PROFILE, "softmax1", 1, runs_root) / "measurements.json"
    saved = index.read_text()
    index.unlink()
    try:
        st = S.status(PROFILE, runs_root)
        assert st["missing"] == [f"{PROFILE}/softmax1-s1"] and len(st["finished"]) == 3
        packed = S.pack(PROFILE, tmp_path / "b.tar.gz", {"format": S.STUDY_FORMAT,
                                                         "profile": PROFILE}, runs_root)
        assert packed["missing_runs"] == [f"{PROFILE}/softmax1-s1"]
    finally:
        index.write_text(saved)


def test_unpack_puts_records_where_the_report_reads_them(finished_study, tmp_path):
    _, _, archive, _ = finished_study
    out = S.unpack(archive, root=tmp_path)
    assert out["profile"] == PROFILE and len(out["runs"]) == 4 and out["missing"] == []
    for v, s in runs(PROFILE):
        assert S.record_complete(tmp_path / "runs" / PROFILE / f"{v}-s{s}")
    assert json.loads((tmp_path / "results" / PROFILE / "study.json").read_text())["profile"] == PROFILE
    timings = (tmp_path / "build" / PROFILE / "timings.jsonl").read_text().splitlines()
    assert [json.loads(l)["stage"] for l in timings] == ["data", "train and measure"]


def test_unpack_refuses_what_is_not_a_record(finished_study, tmp_path):
    _, _, archive, _ = finished_study
    bad = tmp_path / "bad.tar.gz"
    with tarfile.open(archive) as src, tarfile.open(bad, "w:gz") as dst:
        for m in src.getmembers():
            dst.addfile(m, src.extractfile(m))
        evil = tmp_path / "evil.txt"
        evil.write_text("x")
        dst.add(evil, arcname=f"runs/{PROFILE}/../../etc/evil.txt")
    with pytest.raises(S.StudyError, match="unexpected member"):
        S.unpack(bad, root=tmp_path / "out")
    assert not (tmp_path / "out" / "runs").exists()            # nothing half-written
    with pytest.raises(S.StudyError, match="does not exist"):
        S.unpack(tmp_path / "none.tar.gz", root=tmp_path)


def test_the_bundle_carries_what_the_node_lacks_and_nothing_it_has():
    from offbyone import bundle as B
    reqs = [B._requirement_name(r) for r in B.bundled_requirements()]
    assert "papermill" in reqs and "pyyaml" in reqs
    assert not set(reqs) & set(B.STOCK)
    assert "--no-index" in B.RUN_SH and "offbyone.study run" in B.RUN_SH
    assert B.OFFLINE_ENV["PIP_NO_INDEX"] == "1" and B.OFFLINE_ENV["PIP_CONFIG_FILE"]


@pytest.mark.slow
def test_bundle_rehearsal_offline(tmp_path):
    """The node's path on this CPU (CI's cut form): a bundle for this interpreter, a fresh venv
    holding only a GPU image's packages, pip with no index and dead proxies, the gpu profile's
    quick rehearsal run from the bundle, its archive unpacked on the 'CPU machine'."""
    from offbyone import bundle as B
    out = B.rehearse(tmp_path, profile="gpu-quickrehearsal", jobs=2)
    assert out["bundle"]["bytes"] < B.BUNDLE_LIMIT
    assert any(w.startswith("papermill-") for w in out["bundle"]["wheels"])
    assert not any(w.startswith("torch-") for w in out["bundle"]["wheels"])
    assert out["unpacked"]["missing"] == []
    assert len(out["unpacked"]["runs"]) == len(S.study_runs("gpu-quickrehearsal"))


def test_the_bos_peak_curve_comes_from_every_runs_log(finished_study):
    from offbyone.report.results import bos_curve
    _, runs_root, _, _ = finished_study
    curve = bos_curve(PROFILE, runs_root)
    steps = sorted(set(curve.step))
    assert steps == [0, 15, 30]                   # every evaluation of the 30-step runs
    n_layer = load_profile(PROFILE)["train"]["n_layer"]
    assert set(curve.layer) == set(range(n_layer + 1))           # the embedding, then blocks
    assert len(curve) == len(runs(PROFILE)) * len(steps) * (n_layer + 1)
    assert (curve.bos_ratio > 0).all() and curve.val_loss.notna().all()


def test_a_study_cut_short_is_reported_with_its_missing_runs(finished_study, tmp_path, monkeypatch):
    """An unpacked study (results/<profile>/study.json) whose node ran out of time: the report
    is made from the runs that finished and names the missing ones."""
    from offbyone.report import results as R
    _, runs_root, _, _ = finished_study
    assert not R.cut_short_allowed(PROFILE)
    index = S.run_folder(PROFILE, "softmax1", 1, runs_root) / "measurements.json"
    saved = index.read_text()
    index.unlink()
    try:
        with pytest.raises(FileNotFoundError, match="measurements.json is missing"):
            list(R.measured_files(PROFILE, runs_root))
        monkeypatch.setattr(R, "cut_short_allowed", lambda profile: True)
        got = [(v, s) for v, s, _ in R.measured_files(PROFILE, runs_root)]
        assert ("softmax1", 1) not in got and len(got) == 3
        assert R.missing_runs(PROFILE, runs_root) == [f"{PROFILE}/softmax1-s1"]
    finally:
        index.write_text(saved)


def test_a_study_of_ensembles_leaves_the_same_records(tmp_path):
    """--ensemble 2: each variant's two seeds train as one ensemble; every run still leaves its
    own complete record, and the archive holds them all."""
    out = S.run_study(PROFILE, jobs=1, devices="cpu", archive=str(tmp_path / "e.tar.gz"),
                      runs_root=str(tmp_path / "runs"), log=lambda *a: None, ensemble=2)
    assert out["missing_runs"] == [] and out["ensemble"] == 2
    assert sorted(r["ensemble_of"] for r in out["runs"]) == [2, 2, 2, 2]
    for v, s in runs(PROFILE):
        folder = S.run_folder(PROFILE, v, s, str(tmp_path / "runs"))
        assert S.record_complete(folder)
        assert json.loads((folder / "train_summary.json").read_text())["ensemble_of"] == 2


def _final_numbers(runs_root) -> dict:
    """Each run's final measurement, the numbers a report reads."""
    out = {}
    for v, s in runs(PROFILE):
        folder = S.run_folder(PROFILE, v, s, runs_root)
        files = json.loads((folder / "measurements.json").read_text())["files"]
        r = json.loads((folder / files[-1].split("/")[-1]).read_text())
        out[(v, s)] = {"val": r["losses"]["val"], "kurtosis": r["activations"]["anchor"]["max_kurtosis"],
                       **{q["config"]: q["gap"] for q in r["quant"]}}
    return out


def _same_numbers(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k] == pytest.approx(b[k], rel=1e-6, abs=1e-9), k


def test_the_array_executor_runs_each_run_as_a_task_with_the_local_runs_numbers(finished_study,
                                                                                 tmp_path):
    """--executor slurm's path (one task a run, records where the local runner writes them)
    through submitit's local stand-in for a cluster; the real Slurm is tests/test_slurm.py."""
    pytest.importorskip("submitit")
    _, local_root, _, _ = finished_study
    runs_root = str(tmp_path / "runs")
    logs = []
    out = S.run_study(PROFILE, archive=str(tmp_path / "a.tar.gz"), runs_root=runs_root,
                      executor="slurm", cluster="local", jobs_folder=str(tmp_path / "jobs"),
                      slurm={"array_parallelism": 2, "cpus_per_task": 1}, log=logs.append)
    assert out["missing_runs"] == [] and out["finished_runs"] == 4
    assert out["executor"]["name"] == "slurm" and out["executor"]["array_parallelism"] == 2
    assert any("submitted 4 task(s) as job array" in m for m in logs)
    _same_numbers(_final_numbers(runs_root), _final_numbers(local_root))
    # a resubmission skips finished runs: nothing is submitted
    submitted = sorted((tmp_path / "jobs").iterdir())
    again = S.run_study(PROFILE, archive=str(tmp_path / "b.tar.gz"), runs_root=runs_root,
                        executor="slurm", cluster="local", jobs_folder=str(tmp_path / "jobs"),
                        log=logs.append)
    assert again["runs"] == [] and sorted((tmp_path / "jobs").iterdir()) == submitted
    assert S.status(PROFILE, runs_root)["missing"] == []


def test_executor_and_slurm_options_are_checked_by_name(tmp_path):
    with pytest.raises(S.StudyError, match="unknown executor 'pbs'; valid: local, slurm"):
        S.run_study(PROFILE, executor="pbs", runs_root=str(tmp_path))
    with pytest.raises(S.StudyError, match="unknown Slurm option.*valid: partition, time_min"):
        S.slurm_executor(tmp_path, "x", {"queue": "a"}, cluster="local")


def test_a_preempted_task_is_requeued_with_its_own_runs():
    """submitit's checkpoint protocol: on preemption or timeout the task hands back itself with
    the same group, which train() resumes from its latest checkpoint."""
    submitit = pytest.importorskip("submitit")
    task = S.SlurmTask("runs-x", 2)
    group = [[PROFILE, "softmax", 0], [PROFILE, "softmax", 1]]
    again = task.checkpoint(group)
    assert isinstance(again, submitit.helpers.DelayedSubmission)
    assert again.args == (group,) and isinstance(again.function, S.SlurmTask)
    assert (again.function.runs_root, again.function.threads) == ("runs-x", 2)
