"""The study as a Slurm job array on a real one-node Slurm (Debian's slurm-wlm and munge),
started here for the test: munged, slurmctld and slurmd with a minimal slurm.conf (this machine,
its CPUs), the smoke testbed submitted through `python -m offbyone.study`'s executor, the
records compared with a local run's, the daemons stopped. Skipped, with the reason, where the
daemons cannot start (no root, no slurm-wlm, a container without what they need)."""
import json
import os
import shutil
import socket
import subprocess
import time

import pytest

from offbyone import study as S
from offbyone.profiles import runs

PROFILE = "testbed_smoke"
DAEMONS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "sinfo")

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SLURM_CONF = """ClusterName=offbyone
SlurmctldHost={host}
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
AuthType=auth/munge
AuthInfo=socket={d}/munge.sock
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
InactiveLimit=0
KillWait=5
Waittime=0
NodeName={host} CPUs={cpus} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


@pytest.fixture
def slurm(tmp_path, monkeypatch):
    """A one-node Slurm of this machine's CPUs, in tmp_path; SLURM_CONF points at it."""
    missing = [d for d in DAEMONS if not shutil.which(d)]
    if missing:
        pytest.skip(f"no one-node Slurm here ({', '.join(missing)} missing: apt-get install "
                    "slurm-wlm munge)")
    if os.geteuid() != 0:
        pytest.skip("the test starts slurmd, which runs jobs as their user: it needs root")
    d = tmp_path / "slurm"
    for sub in ("state", "spool"):
        (d / sub).mkdir(parents=True)
    conf = d / "slurm.conf"
    conf.write_text(SLURM_CONF.format(host=socket.gethostname(), ctld_port=_free_port(),
                                      d_port=_free_port(), d=d, cpus=os.cpu_count() or 1))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    started = []

    def start(cmd):
        res = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if res.returncode != 0:
            pytest.skip(f"{cmd[0]} could not start here: {(res.stderr or res.stdout).strip()[-300:]}")
        started.append(cmd[0])

    try:
        subprocess.run(["mungekey", "-c", "-k", str(d / "munge.key")], check=True,
                       capture_output=True)
        os.chmod(d / "munge.key", 0o400)
        start(["munged", f"--key-file={d}/munge.key", f"--socket={d}/munge.sock",
               f"--pid-file={d}/munged.pid", f"--log-file={d}/munged.log",
               f"--seed-file={d}/munge.seed", "--force"])
        start(["slurmctld", "-f", str(conf)])
        start(["slurmd", "-f", str(conf)])
        deadline = time.time() + 30
        while True:
            state = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True,
                                   text=True).stdout.strip()
            if state == "idle":
                break
            if time.time() > deadline:
                log = (d / "slurmd.log").read_text()[-500:] if (d / "slurmd.log").exists() else ""
                pytest.skip(f"the Slurm node did not come up (state {state!r}): {log}")
            time.sleep(0.5)
        monkeypatch.setenv("SLURM_CONF", str(conf))
        yield d
    finally:
        for name, pid in (("slurmd", "slurmd.pid"), ("slurmctld", "slurmctld.pid"),
                          ("munged", "munged.pid")):
            f = d / pid
            if name in started and f.exists():
                try:
                    os.kill(int(f.read_text().strip()), 15)
                except (ProcessLookupError, ValueError):
                    pass
        time.sleep(1)


def _numbers(runs_root) -> dict:
    out = {}
    for v, s in runs(PROFILE):
        folder = S.run_folder(PROFILE, v, s, runs_root)
        files = json.loads((folder / "measurements.json").read_text())["files"]
        for f in files:
            r = json.loads((folder / f.split("/")[-1]).read_text())
            out[(v, s, r["step"])] = [r["losses"]["val"], r["losses"]["test"],
                                      r["activations"]["anchor"]["max_kurtosis"],
                                      r["activations"]["anchor"]["max_inf_norm"]] + [
                                      q["gap"] for q in r["quant"]]
    return out


def test_the_smoke_testbed_as_a_slurm_array_matches_a_local_run(slurm, tmp_path):
    t0 = time.perf_counter()
    on_slurm = S.run_study(PROFILE, archive=str(tmp_path / "slurm.tar.gz"),
                           runs_root=str(tmp_path / "slurm-runs"), executor="slurm",
                           jobs_folder=str(tmp_path / "jobs"), log=print,
                           slurm={"partition": "debug", "time_min": 10, "cpus_per_task": 1,
                                  "array_parallelism": 2})
    wall = time.perf_counter() - t0
    local = S.run_study(PROFILE, jobs=1, devices="cpu", threads=1,
                        archive=str(tmp_path / "local.tar.gz"),
                        runs_root=str(tmp_path / "local-runs"), log=lambda *a: None)
    assert on_slurm["missing_runs"] == [] and local["missing_runs"] == []
    a, b = _numbers(tmp_path / "slurm-runs"), _numbers(tmp_path / "local-runs")
    assert a.keys() == b.keys() and len(a) == 2 * len(runs(PROFILE))
    for k in a:
        assert a[k] == pytest.approx(b[k], rel=1e-6, abs=1e-9), k
    # every run was one task of one array, and each task left its Slurm log
    tasks = on_slurm["executor"]["tasks"]
    array = {t.split("_")[0] for t in tasks}
    assert len(tasks) == len(runs(PROFILE)) and len(array) == 1
    assert all((tmp_path / "jobs" / t / f"{t}_0_log.out").exists()
               or list((tmp_path / "jobs").glob(f"{t}_0_log.out")) for t in tasks)
    print(f"array of {len(runs(PROFILE))} tasks on Slurm in {wall:.0f} s; "
          f"{len(a)} measured checkpoints equal to a local run's")
    # status reads the same records
    assert S.status(PROFILE, str(tmp_path / "slurm-runs"))["missing"] == []
