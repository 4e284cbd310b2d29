"""A whole study in one process per stage, for a GPU node (often offline, always short of time).

`make reproduce` runs one notebook kernel per run and stage, which costs about 12 s a notebook
on a GPU node (results/gpu/check.json) and needs papermill there. This module runs the same
`train()` and `measure()` on every run of a profile and its companions (testbed, ablations),
with no notebook:

    python -m offbyone.study run gpu                # every run; resumes; skips finished runs
    python -m offbyone.study run gpu --jobs 4       # 4 runs at once (spread over the GPUs)
    python -m offbyone.study run gpu --ensemble 5   # each variant's seeds as one vmapped ensemble
    python -m offbyone.study status gpu             # which runs are finished, which missing
    python -m offbyone.study unpack ARCHIVE         # on the CPU machine: the records into runs/
    python -m offbyone.study run gpu --executor slurm --slurm-partition gpu --slurm-gpus-per-task 1
                                                    # on a Slurm cluster: one array task a run

Each run keeps its own record, as the notebooks leave it: `log.jsonl`, `train_summary.json`,
a `.metrics.json` per checkpoint and `measurements.json` (the report's index). As soon as a run
is measured, its record goes into one archive (`build/<profile>/study.tar.gz`, at most
`ARCHIVE_LIMIT` bytes: measurements, logs and provenance, no checkpoints), rewritten
atomically after every run, so a node whose time runs out still hands back every finished run.
A rerun skips a run whose record is complete, even on a fresh node without its checkpoints.

On a cluster (`--executor slurm`) each unfinished run, or each ensemble of seeds, is one task of
a Slurm job array submitted through `submitit` (an optional dependency: pip install
'offbyone[slurm]'); every task writes its run's record where the local runner does, on the
shared file system, and a preempted or timed-out task is requeued and resumes from its latest
checkpoint. The job's own files (submitit's pickles and logs) go to build/<profile>/slurm/.

On a node with several GPUs the runs spread over them, `jobs` slots in all, slot i on GPU
i mod n (`assign_devices`); one large run can still use every GPU through `torchrun`.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tarfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from .profiles import load_profile, repo_root, run_config, run_dir, runs

STUDY_FORMAT = "offbyone-study"
ARCHIVE_LIMIT = 16 * 2**20          # what comes back from a node: one file of at most 16 MiB
RECORD_FILES = ("log.jsonl", "train_summary.json", "measurements.json")
RECORD_SUFFIX = ".metrics.json"


class StudyError(RuntimeError):
    """A study that cannot run, or an archive that cannot be unpacked, with the reason."""


EXECUTORS = ("local", "slurm")
# the Slurm options (flags --slurm-partition, ...), passed to submitit's executor
SLURM_DEFAULTS = {"partition": None, "time_min": 60, "gpus_per_task": 0, "cpus_per_task": 1,
                  "array_parallelism": 16}
SLURM_HELP = {"partition": "the partition (default: the cluster's default partition)",
              "time_min": "a task's time limit in minutes; a task cut off is requeued and resumes",
              "gpus_per_task": "GPUs per task",
              "cpus_per_task": "CPUs per task (and torch threads)",
              "array_parallelism": "tasks of the array running at once, at most"}


# --------------------------------------------------------------------------------------------
# What to run, and where

def study_runs(profile: str) -> list[tuple[str, str, int]]:
    """(profile, variant, seed) of every run: the profile's, then its testbed's and ablations'."""

    main = load_profile(profile)
    names = [profile] + [p for p in [main.get("testbed")] + (main.get("ablations") or []) if p]
    return [(name, v, s) for name in names for v, s in runs(name)]


def available_devices(spec: str = "auto") -> list[str]:
    """'auto': every CUDA GPU (cuda:0 ... cuda:n-1), else ['cpu']; or a comma-separated list."""
    import torch

    if spec == "auto":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        return [f"cuda:{i}" for i in range(n)] or ["cpu"]
    devices = [d.strip() for d in spec.split(",") if d.strip()]
    from .device import valid_device
    bad = [d for d in devices if not valid_device(d) or d == "auto"]
    if not devices or bad:
        raise StudyError(f"devices must be 'auto' or a list such as cuda:0,cuda:1 or cpu; got {spec!r}")
    return devices


def assign_devices(jobs: int, devices: list[str]) -> list[str]:
    """The device of each of `jobs` worker slots: slot i on devices[i mod n], so that runs
    spread evenly over the GPUs (with 2 GPUs and 4 jobs: two runs at once on each)."""
    if jobs < 1:
        raise StudyError(f"jobs must be >= 1, got {jobs}")
    if not devices:
        raise StudyError("no device to run on")
    return [devices[i % len(devices)] for i in range(jobs)]


def run_folder(name: str, variant: str, seed: int, runs_root: str = "runs") -> Path:
    return run_dir(name, variant, seed, runs_root)


def record_complete(folder: Path) -> bool:
    """Whether a run's record is whole: its measurements index lists files that all exist."""
    index = folder / "measurements.json"
    if not index.exists() or not (folder / "train_summary.json").exists():
        return False
    files = json.loads(index.read_text()).get("files") or []
    return bool(files) and all((folder / Path(f).name).exists() for f in files)


# --------------------------------------------------------------------------------------------
# One run: train, then measure each checkpoint (the same calls as notebooks 02 and 03)

_SLOT: dict = {}


def _init_worker(slots, threads: int) -> None:
    """A worker process takes one slot's device for its life."""
    _SLOT["device"] = slots.get()
    if threads:
        import torch
        torch.set_num_threads(threads)


def run_one(name: str, variant: str, seed: int, device: str | None = None,
            runs_root: str = "runs", threads: int = 0) -> dict:
    """Train one run of profile `name` (or resume it, or skip it if finished), measure its
    checkpoints, write its measurements index. Returns its timing record."""
    from .train import train

    device = device or _SLOT.get("device") or "auto"
    over = {"device": device, "progress": sys.stderr.isatty()}
    if threads:
        over["threads"] = threads
    cfg = run_config(name, variant, seed, over, runs_root)
    t0 = time.perf_counter()
    summary = train(cfg)
    t1 = time.perf_counter()
    _measure_run(name, variant, seed, Path(cfg.out_dir), device)
    return {"profile": name, "variant": variant, "seed": seed, "device": device,
            "train_s": t1 - t0, "measure_s": time.perf_counter() - t1, "end": time.time(),
            "val_loss": summary.get("val_loss")}


def _measure_run(name: str, variant: str, seed: int, folder: Path, device: str) -> None:
    """Measure every checkpoint of a trained run and write its measurements index."""
    from .io import write_json
    from .measure import measure
    from .train import list_checkpoints

    mconf = dict(load_profile(name)["measure"], device=device)
    ckpts = list_checkpoints(folder)
    for c in ckpts:
        measure(c, mconf, verbose=False, attention=variant)
    root = repo_root()
    files = [str(c.with_name(c.stem + RECORD_SUFFIX).resolve().relative_to(root))
             if c.resolve().is_relative_to(root) else str(c.with_name(c.stem + RECORD_SUFFIX))
             for c in ckpts]
    write_json(folder / "measurements.json",
               {"profile": name, "variant": variant, "seed": seed, "files": files})


def run_group(group: list[tuple[str, str, int]], device: str | None = None,
              runs_root: str = "runs", threads: int = 0) -> list[dict]:
    """Train the seeds of one profile and variant as one ensemble (offbyone.ensemble), then
    measure each. Returns each run's timing record (the ensemble's time shared out)."""
    from .ensemble import train_ensemble

    if len(group) == 1:
        return [run_one(*group[0], device, runs_root, threads)]
    device = device or _SLOT.get("device") or "auto"
    over = {"device": device, "progress": sys.stderr.isatty(), **({"threads": threads} if threads else {})}
    cfgs = [run_config(n, v, s, over, runs_root) for n, v, s in group]
    t0 = time.perf_counter()
    summaries = train_ensemble(cfgs)
    train_s = (time.perf_counter() - t0) / len(group)
    out = []
    for (n, v, s), cfg, summ in zip(group, cfgs, summaries):
        t1 = time.perf_counter()
        _measure_run(n, v, s, Path(cfg.out_dir), device)
        out.append({"profile": n, "variant": v, "seed": s, "device": device, "train_s": train_s,
                    "measure_s": time.perf_counter() - t1, "end": time.time(),
                    "val_loss": summ.get("val_loss"), "ensemble_of": len(group)})
    return out


class SlurmTask:
    """One array task: a group of runs (one run, or an ensemble's seeds) trained and measured
    by run_group. Requeued on preemption or timeout with the same group (submitit's
    Checkpointable protocol): train() resumes from the run's latest checkpoint and skips a
    finished run, so nothing is lost but the steps since that checkpoint."""

    def __init__(self, runs_root: str, threads: int):
        self.runs_root, self.threads = runs_root, threads

    def __call__(self, group: list) -> list[dict]:
        return run_group([tuple(g) for g in group], None, self.runs_root, self.threads)

    def checkpoint(self, group: list):
        import submitit
        return submitit.helpers.DelayedSubmission(SlurmTask(self.runs_root, self.threads), group)


def slurm_executor(folder: Path, name: str, options: dict, cluster: str = "slurm"):
    """submitit's executor for the study's array: `options` are SLURM_DEFAULTS' keys.
    `cluster` 'local' runs the same array as local processes (submitit's stand-in, for tests)."""
    try:
        import submitit
    except ImportError:
        raise StudyError("--executor slurm needs submitit: pip install 'offbyone[slurm]' "
                         "(or pip install submitit)") from None
    opts = {**SLURM_DEFAULTS, **{k: v for k, v in options.items() if v is not None}}
    bad = [k for k in options if k not in SLURM_DEFAULTS]
    if bad:
        raise StudyError(f"unknown Slurm option(s) {bad}; valid: {', '.join(SLURM_DEFAULTS)}")
    ex = submitit.AutoExecutor(folder=folder / "%j", cluster=cluster)
    params = {"name": name, "timeout_min": int(opts["time_min"]),
              "cpus_per_task": int(opts["cpus_per_task"]),
              "slurm_array_parallelism": int(opts["array_parallelism"])}
    if cluster == "slurm":
        params.update(slurm_partition=opts["partition"],
                      slurm_gpus_per_task=int(opts["gpus_per_task"]) or None)
    elif opts["gpus_per_task"]:
        params["gpus_per_node"] = int(opts["gpus_per_task"])
    ex.update_parameters(**{k: v for k, v in params.items() if v is not None})
    return ex


def run_array(profile: str, groups: list, finished, runs_root: str = "runs", threads: int = 0,
              slurm: dict | None = None, cluster: str = "slurm", log=print,
              folder: Path | None = None) -> list[str]:
    """Every group as one task of a job array; each finished task's records are handed to
    `finished` as they come (submitit's as_completed). A task that failed is named with its
    log once every other task is done. The array's own files go to `folder` (default
    build/<profile>/slurm/). Returns the tasks' job ids (ARRAY_TASK)."""
    folder = Path(folder or repo_root() / "build" / profile / "slurm")
    ex = slurm_executor(folder, f"offbyone-{profile}", slurm or {}, cluster)
    import submitit                                  # there: slurm_executor checked it
    task = SlurmTask(runs_root, threads or int((slurm or {}).get("cpus_per_task") or 0))
    jobs = ex.map_array(task, [[list(g) for g in group] for group in groups])
    log(f"submitted {len(jobs)} task(s) as job array {jobs[0].job_id.split('_')[0]} "
        f"({cluster}); their files: {folder}" if jobs else "nothing to submit")
    failed = []
    for job in submitit.helpers.as_completed(jobs):
        try:
            records = job.result()
        except Exception as e:                      # the task's own error, with its log
            first = (str(e).splitlines() or [""])[0]
            failed.append(f"task {job.job_id}: {type(e).__name__}: {first} "
                          f"(log: {job.paths.stderr})")
            continue
        for rec in records:
            finished(rec)
    if failed:
        raise StudyError(f"{len(failed)} of {len(jobs)} task(s) failed; the finished runs are in "
                         f"the archive and a resubmission runs the rest:\n  " + "\n  ".join(failed))
    return [j.job_id for j in jobs]


# --------------------------------------------------------------------------------------------
# The archive that comes back from the node

def _record_members(profile: str, runs_root: str) -> list[tuple[str, Path]]:
    """(name in the archive, file) of every finished run's record."""
    out = []
    for name, v, s in study_runs(profile):
        folder = run_folder(name, v, s, runs_root)
        if not record_complete(folder):
            continue
        rel = Path(name) / folder.name
        for f in sorted(folder.iterdir()):
            if f.name in RECORD_FILES or f.name.endswith(RECORD_SUFFIX):
                out.append((str(Path("runs") / rel / f.name), f))
    return out


def pack(profile: str, archive: Path, study: dict, runs_root: str = "runs") -> dict:
    """Write the archive (atomically): every finished run's record plus study.json (provenance,
    stage times, the runs still missing). Refuses to exceed ARCHIVE_LIMIT."""
    from .io import atomic_path

    members = _record_members(profile, runs_root)
    done = {tuple(m[0].split("/")[1:3]) for m in members}
    missing = [f"{n}/{v}-s{s}" for n, v, s in study_runs(profile) if (n, f"{v}-s{s}") not in done]
    study = {**study, "finished_runs": len(done), "missing_runs": missing}
    blob = json.dumps(study, indent=1).encode()
    archive = Path(archive)
    archive.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(archive, ".partial") as tmp:
        with tarfile.open(tmp, "w:gz") as tar:
            info = tarfile.TarInfo("study.json")
            info.size, info.mtime = len(blob), int(time.time())
            tar.addfile(info, io.BytesIO(blob))
            for arcname, f in members:
                tar.add(f, arcname=arcname, recursive=False)
        size = tmp.stat().st_size
        if size > ARCHIVE_LIMIT:
            raise StudyError(f"the archive would be {size / 2**20:.1f} MiB, over the "
                             f"{ARCHIVE_LIMIT / 2**20:.0f} MiB that comes back from a node")
    return {"archive": str(archive), "bytes": size, "finished_runs": len(done),
            "missing_runs": missing}


def unpack(archive: Path, root: Path | None = None) -> dict:
    """On the CPU machine: the archive's run records into runs/<profile>/<run>/ and its
    study.json into results/<profile>/study.json, and the stage times into
    build/<profile>/timings.jsonl for the report's provenance. Only record files are accepted."""
    from .io import write_json, write_text

    root = Path(root or repo_root())
    archive = Path(archive)
    if not archive.exists():
        raise StudyError(f"archive {archive} does not exist")
    with tarfile.open(archive, "r:gz") as tar:
        names = tar.getnames()
        if "study.json" not in names:
            raise StudyError(f"{archive} holds no study.json: not a study archive")
        study = json.loads(tar.extractfile("study.json").read())
        if study.get("format") != STUDY_FORMAT:
            raise StudyError(f"{archive}: study.json is not of format {STUDY_FORMAT}")
        profile = study["profile"]
        allowed = {f"{n}/{v}-s{s}" for n, v, s in study_runs(profile)}
        runs_seen = set()
        for m in tar.getmembers():
            if m.name == "study.json":
                continue
            parts = Path(m.name).parts
            ok = (m.isfile() and len(parts) == 4 and parts[0] == "runs"
                  and f"{parts[1]}/{parts[2]}" in allowed
                  and (parts[3] in RECORD_FILES or parts[3].endswith(RECORD_SUFFIX)))
            if not ok:
                raise StudyError(f"{archive}: unexpected member {m.name!r} (only the records of "
                                 f"profile {profile}'s runs are unpacked)")
        for m in tar.getmembers():
            if m.name == "study.json":
                continue
            parts = Path(m.name).parts
            dest = root / "runs" / parts[1] / parts[2] / parts[3]
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(dest.name + ".unpacking")
            tmp.write_bytes(tar.extractfile(m).read())
            os.replace(tmp, dest)
            runs_seen.add(f"{parts[1]}/{parts[2]}")
    write_json(root / "results" / profile / "study.json", study)
    write_text(root / "build" / profile / "timings.jsonl", "".join(
        json.dumps({"stage": st["stage"], "target": f"study:{st['stage']}",
                    "seconds": st["seconds"], "end": st["end"]}) + "\n"
        for st in study.get("stages", [])))
    return {"profile": profile, "runs": sorted(runs_seen), "missing": study.get("missing_runs", [])}


# --------------------------------------------------------------------------------------------
# The study

def status(profile: str, runs_root: str = "runs") -> dict:
    done, missing = [], []
    for n, v, s in study_runs(profile):
        (done if record_complete(run_folder(n, v, s, runs_root)) else missing).append(f"{n}/{v}-s{s}")
    return {"profile": profile, "finished": done, "missing": missing}


def run_study(profile: str, jobs: int = 1, devices: str = "auto", archive: str | None = None,
              runs_root: str = "runs", threads: int = 0, log=print, ensemble: int = 1,
              executor: str = "local", slurm: dict | None = None,
              cluster: str = "slurm", jobs_folder: str | None = None) -> dict:
    """Prepare the data, then train and measure every unfinished run, `jobs` at once, packing
    the archive after each finished run. With `ensemble` > 1 the seeds of each profile and
    variant train in ensembles of up to that many (offbyone.ensemble), one job each. With
    `executor` 'slurm' each group is one task of a Slurm job array instead (run_array;
    `slurm`: SLURM_DEFAULTS' keys; the array's files in `jobs_folder`), and `jobs` and
    `devices` do not apply. Returns the study record (also in the archive)."""
    if executor not in EXECUTORS:
        raise StudyError(f"unknown executor {executor!r}; valid: {', '.join(EXECUTORS)}")
    from .ensemble import ensemble_groups

    import torch

    from .data import prepare_for
    from .provenance import provenance

    load_profile(profile)                          # a bad profile stops here, before any work
    slots = assign_devices(jobs, available_devices(devices))
    if not threads and jobs > 1 and all(d == "cpu" for d in slots):
        threads = max(1, (os.cpu_count() or 1) // jobs)   # CPU runs at once share the cores
    archive = Path(archive or repo_root() / "build" / profile / "study.tar.gz")
    study = {"format": STUDY_FORMAT, "profile": profile, "jobs": jobs, "slots": slots,
             "ensemble": ensemble,
             "provenance": provenance(slots[0]), "stages": []}
    t_start = time.perf_counter()

    def stage_done(name: str, t0: float) -> None:
        study["stages"].append({"stage": name, "seconds": time.perf_counter() - t0,
                                "end": time.time()})

    t0 = time.perf_counter()
    todo, corpora = [], {}
    for name, v, s in study_runs(profile):
        cfg = run_config(name, v, s, runs_root=runs_root)
        key = tuple(getattr(cfg, k) for k in ("corpus", "tokenizer", "bpe_vocab_size", "max_tokens"))
        corpora.setdefault(key, cfg)
        if not record_complete(Path(cfg.out_dir)):
            todo.append((name, v, s))
    for cfg in corpora.values():
        prepare_for(cfg)
    stage_done("data", t0)
    total = len(study_runs(profile))
    log(f"study {profile}: {total - len(todo)} of {total} runs already finished; "
        f"{len(todo)} to run, {jobs} at once on {', '.join(sorted(set(slots)))}")
    t0 = time.perf_counter()
    study["runs"] = []

    def finished(rec: dict) -> None:
        study["runs"].append(rec)
        packed = pack(profile, archive, {**study, "wall_s": time.perf_counter() - t_start},
                      runs_root)
        log(f"[{len(study['runs'])}/{len(todo)}] {rec['profile']}/{rec['variant']}-s{rec['seed']} "
            f"on {rec['device']}: trained in {rec['train_s']:.0f} s, measured in "
            f"{rec['measure_s']:.0f} s; archive {packed['bytes'] / 2**20:.2f} MiB")

    groups = ensemble_groups(todo, ensemble) if todo else []
    if executor == "slurm":
        study["executor"] = {"name": "slurm", "cluster": cluster, **SLURM_DEFAULTS,
                             **{k: v for k, v in (slurm or {}).items() if v is not None}}
        if groups:
            study["executor"]["tasks"] = run_array(profile, groups, finished, runs_root,
                                                   threads, slurm, cluster, log, jobs_folder)
    elif jobs == 1 or len(groups) <= 1:
        for group in groups:
            for rec in run_group(group, slots[0], runs_root, threads):
                finished(rec)
    else:
        import multiprocessing as mp
        ctx = mp.get_context("spawn")              # CUDA cannot be forked
        queue = ctx.Manager().Queue()
        for d in slots:
            queue.put(d)
        with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_init_worker,
                                 initargs=(queue, threads)) as pool:
            futures = [pool.submit(run_group, g, None, runs_root, threads) for g in groups]
            for fut in as_completed(futures):
                for rec in fut.result():
                    finished(rec)
    stage_done("train and measure", t0)
    study["wall_s"] = time.perf_counter() - t_start
    packed = pack(profile, archive, study, runs_root)
    if torch.cuda.is_available():
        study["max_memory_allocated"] = torch.cuda.max_memory_allocated()
    log(f"study {profile}: {packed['finished_runs']} runs finished, "
        f"{len(packed['missing_runs'])} missing, {study['wall_s'] / 60:.1f} min; "
        f"archive {packed['archive']} ({packed['bytes'] / 2**20:.2f} MiB)")
    return {**study, **packed}


def main(argv=None):
    ap = argparse.ArgumentParser(description="Run a study's every run in one process per stage "
                                 "(for a GPU node), report what is missing, or unpack what a "
                                 "node handed back.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="train and measure every unfinished run of a profile")
    r.add_argument("profile")
    r.add_argument("--jobs", type=int, default=1, help="runs at once (default 1)")
    r.add_argument("--devices", default="auto",
                   help="'auto' (every CUDA GPU, else the CPU) or a list: cuda:0,cuda:1")
    r.add_argument("--archive", help="where the archive goes (default build/PROFILE/study.tar.gz)")
    r.add_argument("--threads", type=int, default=0,
                   help="torch threads per run on CPU (0: torch's default)")
    r.add_argument("--ensemble", type=int, default=1, metavar="N",
                   help="train the seeds of each variant as ensembles of up to N (one vmapped "
                        "model, shared kernel launches; default 1: each run alone)")
    r.add_argument("--executor", choices=EXECUTORS, default="local",
                   help="local: this machine's processes (default); slurm: one task of a Slurm "
                        "job array a run (or an ensemble), through submitit")
    for key, default in SLURM_DEFAULTS.items():
        r.add_argument(f"--slurm-{key.replace('_', '-')}", dest=f"slurm_{key}",
                       type=None if key == "partition" else int, default=None,
                       help=f"with --executor slurm: {SLURM_HELP[key]}"
                            + ("" if default is None else f" (default {default})"))
    s = sub.add_parser("status", help="which runs of a profile are finished, which missing")
    s.add_argument("profile")
    u = sub.add_parser("unpack", help="a node's archive into runs/ and results/PROFILE/study.json")
    u.add_argument("archive")
    args = ap.parse_args(argv)
    from .config import ConfigError
    try:
        if args.cmd == "run":
            slurm = {k: getattr(args, f"slurm_{k}") for k in SLURM_DEFAULTS}
            out = run_study(args.profile, args.jobs, args.devices, args.archive,
                            threads=args.threads, ensemble=args.ensemble,
                            executor=args.executor, slurm=slurm)
            if out["missing_runs"]:
                sys.exit(f"missing runs: {', '.join(out['missing_runs'])}")
        elif args.cmd == "status":
            st = status(args.profile)
            print(f"{args.profile}: {len(st['finished'])} finished, {len(st['missing'])} missing")
            for m in st["missing"]:
                print(f"  missing {m}")
        else:
            out = unpack(Path(args.archive))
            print(f"unpacked {len(out['runs'])} runs of profile {out['profile']} into runs/"
                  + (f"; missing: {', '.join(out['missing'])}" if out["missing"] else ""))
    except (StudyError, ConfigError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
