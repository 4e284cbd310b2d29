"""Where a result came from: git commit, versions, device, time."""
from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

from .config import ConfigError
from .profiles import profile_files

REPO_ROOT = Path(__file__).resolve().parents[2]


def git_sha(short: bool = False) -> str:
    """The checkout's commit (with -dirty for uncommitted changes); where there is no git
    repository (a copied tree on a remote machine), OFFBYONE_GIT_SHA names it."""
    root = REPO_ROOT
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


def loaded_code(root: Path | None = None) -> list[str]:
    """The package's source files loaded in this process, relative to the repository root:
    the code that ran while a checkpoint was trained or measured (recorded beside it)."""
    root = Path(root or REPO_ROOT).resolve()
    lib = root / "lib" / "offbyone"
    files = set()
    for name, mod in list(sys.modules.items()):
        f = getattr(mod, "__file__", None)
        if name.startswith("offbyone") and f and Path(f).resolve().is_relative_to(lib):
            files.add(Path(f).resolve().relative_to(root).as_posix())
    return sorted(files)


def changed_since(commit: str, paths=("lib", "configs"), exclude=(),
                  root: Path | None = None) -> list[str] | None:
    """Files under `paths` that differ between `commit` and this checkout's working tree (its
    uncommitted changes included); None when there is no git, or the commit is unknown here
    (a shallow clone, a copied tree). A '-dirty' commit is compared as its clean base."""
    root = Path(root or REPO_ROOT)
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


# Code that computes no measured number: the report, the GPU check and the offline bundle's
# builder never run while a checkpoint is trained or measured; the notebook runner (pipeline.py:
# parameters, plan lines, papermill) and this file (it records) run then but compute nothing.
# Left out of the recorded code, and of lib/ for results recorded before the code list was.
NOT_MEASURING = ("lib/offbyone/report", "lib/offbyone/gpu_check", "lib/offbyone/bundle.py",
                 "lib/offbyone/pipeline.py", "lib/offbyone/provenance.py")


def producing_code(prov: dict) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(paths, excluded paths) of the code and profiles that produced a results folder's
    numbers: the package files recorded as loaded while its checkpoints were trained and
    measured (else lib/ less NOT_MEASURING), and its profiles' files (provenance "configs",
    else as its profile names them now)."""
    code = [c for c in prov.get("code") or []
            if not any(c == x or c.startswith(x + "/") for x in NOT_MEASURING)]
    configs = prov.get("configs") or _profile_files(prov.get("profile"))
    if code:
        return tuple(code) + tuple(configs), ()
    return ("lib",) + tuple(configs), NOT_MEASURING


def _profile_files(profile: str | None) -> list[str]:
    """A profile's files as its profile reads now; every profile where it cannot be read."""
    try:
        return profile_files(profile) if profile else ["configs"]
    except ConfigError:
        return ["configs"]


def staleness_of(prov: dict, root: Path | None = None) -> str:
    """'' when every commit that trained or measured a results folder's checkpoints
    (provenance.json's trained_by and measured_by) had this checkout's version of the code that
    ran then and of the folder's profiles; otherwise a sentence saying how they differ. The
    commit that wrote the derived files (tables, macros, primary.csv) does not count: make paper
    derives them again from the measured numbers with this checkout's report code."""
    paths, exclude = producing_code(prov)
    commits = dict.fromkeys(list(prov.get("trained_by") or []) + list(prov.get("measured_by") or [])
                            or [prov["commit"]])
    notes = [staleness(c, paths, exclude, root) for c in commits if c]
    return next((n for n in notes if n), "")


def staleness(commit: str, paths=("lib", "configs"), exclude=(), root: Path | None = None) -> str:
    """'' when the code and profiles (`paths`, less `exclude`) that produced results at `commit`
    are this checkout's; otherwise a plain sentence saying how they differ."""
    where = " and ".join(sorted({f"{p.split('/')[0]}/" for p in paths}))
    if commit.endswith("-dirty"):
        return (f"These numbers were produced by uncommitted changes on top of commit "
                f"{commit.removesuffix('-dirty')[:10]}; they may not match any commit's code.")
    changed = changed_since(commit, paths, exclude, root)
    if changed is None:
        return (f"These numbers were produced by commit {commit[:10]}, which this checkout "
                f"does not have: whether the code under {where} that produced them changed "
                f"since cannot be checked.")
    if changed:
        n = len(changed)
        return (f"{n} file{'s' if n > 1 else ''} of the code under {where} that produced these "
                f"numbers {'have' if n > 1 else 'has'} changed since commit {commit[:10]} "
                f"({'e.g. ' if n > 3 else ''}{', '.join(changed[:3])}), so they may be stale: "
                "make reproduce refreshes them.")
    return ""
