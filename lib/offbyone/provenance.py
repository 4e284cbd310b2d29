"""Where a result came from: git commit, versions, device, time."""
from __future__ import annotations

import datetime
import os
import platform
import subprocess
from pathlib import Path

import torch


def git_sha(short: bool = False) -> str:
    """The checkout's commit (with -dirty for uncommitted changes); where there is no git
    repository (a copied tree on a remote machine), OFFBYONE_GIT_SHA names it."""
    root = Path(__file__).resolve().parents[2]
    if os.environ.get("OFFBYONE_GIT_SHA") and not (root / ".git").exists():
        return os.environ["OFFBYONE_GIT_SHA"]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                             text=True, check=True).stdout.strip()
        # results/ holds data the pipeline itself rewrites (committed results being refreshed),
        # and Markdown files (README, LOG) are prose: only changes to anything else make the
        # code that produces numbers "dirty"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                                ".", ":(exclude)results", ":(exclude)*.md"],
                               cwd=root, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    sha = sha[:10] if short else sha
    return sha + ("-dirty" if dirty else "")


def provenance(device: torch.device | str | None = None) -> dict:
    dev = str(device) if device is not None else "cpu"
    if dev.startswith("cuda") and torch.cuda.is_available():
        dev_name = torch.cuda.get_device_name()
    else:
        dev_name = platform.processor() or platform.machine()
    return {"git_sha": git_sha(), "torch": torch.__version__, "python": platform.python_version(),
            "device": dev, "device_name": dev_name, "threads": torch.get_num_threads(),
            "time_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def changed_since(commit: str, paths=("lib", "configs"), exclude=()) -> list[str] | None:
    """Files under `paths` that differ between `commit` and this checkout's working tree (its
    uncommitted changes included); None when there is no git, or the commit is unknown here
    (a shallow clone, a copied tree). A '-dirty' commit is compared as its clean base."""
    root = Path(__file__).resolve().parents[2]
    base = commit.removesuffix("-dirty")
    try:
        subprocess.run(["git", "cat-file", "-e", f"{base}^{{commit}}"], cwd=root, check=True,
                       capture_output=True)
        out = subprocess.run(["git", "diff", "--name-only", base, "--", *paths,
                              *(f":(exclude){x}" for x in exclude)], cwd=root,
                             check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return [l for l in out.splitlines() if l.strip()]


# code that never runs while a checkpoint is trained or measured: the report, the GPU check,
# the offline bundle's builder and this file (it records, it computes nothing); a change there
# does not make measured numbers stale
NOT_MEASURING = ("lib/offbyone/report", "lib/offbyone/gpu_check.py", "lib/offbyone/bundle.py",
                 "lib/offbyone/provenance.py")


def staleness_of(prov: dict) -> str:
    """staleness() of a results folder's provenance.json: of the commit that wrote it and of
    every commit that measured its checkpoints; '' when all of them had this checkout's code."""
    # the report ran at `commit`: everything counts; the commits that measured ran the code
    # that made the numbers, not the report's, so changes under lib/offbyone/report/ since
    # them do not make the numbers stale
    notes = [staleness(prov["commit"])]
    notes += [staleness(c, exclude=NOT_MEASURING)
              for c in dict.fromkeys(prov.get("measured_by", [])) if c != prov["commit"]]
    return next((n for n in notes if n), "")


def staleness(commit: str, paths=("lib", "configs"), exclude=()) -> str:
    """'' when the code and profiles that produced results at `commit` are this checkout's;
    otherwise a plain sentence saying how they differ."""
    where = " and ".join(f"{p}/" for p in paths)
    if commit.endswith("-dirty"):
        return (f"These numbers were produced by uncommitted changes on top of commit "
                f"{commit.removesuffix('-dirty')[:10]}; they may not match any commit's code.")
    changed = changed_since(commit, paths, exclude)
    if changed is None:
        return (f"These numbers were produced by commit {commit[:10]}, which this checkout "
                f"does not have: whether {where} changed since cannot be checked.")
    if changed:
        return (f"These numbers were produced by commit {commit[:10]}; {len(changed)} file(s) "
                f"under {where} differ in this checkout (e.g. {', '.join(changed[:3])}), so "
                f"they may be stale: make reproduce refreshes them.")
    return ""
