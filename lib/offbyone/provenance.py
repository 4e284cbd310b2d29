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
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
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
