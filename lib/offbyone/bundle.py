"""Everything an offline GPU node lacks, in one folder made on a networked machine.

    python -m offbyone.bundle make                 # build/gpu-bundle/ (make gpu-bundle)
    python -m offbyone.bundle rehearse             # on a CPU: install from it with the network
                                                   # refused, run the study's cut form, unpack

The bundle (at most `BUNDLE_LIMIT`):

    wheels/    the package's own wheel and every dependency's, for the node's Python and
               platform, except those a GPU image ships (`STOCK`: torch and the scientific
               stack); papermill and the notebook stack are among them
    repo/      the repository's tracked files (configs, notebooks, tests, paper), without
               results/: the study runs from here
    run.sh     the one command on the node: installs from wheels/ with no index (beside the
               node's own CUDA torch), then runs the study and leaves its archive in $OUT

The node's data are generated there (the Bigram-Backcopy corpus, from a fixed seed, in seconds);
a profile whose corpus must be downloaded or prepared from files gets its prepared folder
copied into repo/data/ (`--with-data`).
"""
from __future__ import annotations

import argparse
import importlib.metadata as md
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from .profiles import repo_root

BUNDLE_LIMIT = 48 * 2**20
# what a GPU node's PyTorch image ships (KINDS.md of the device tool lists it): never bundled
STOCK = ("torch", "numpy", "scipy", "pandas", "matplotlib")
NODE_PYTHON = "3.12"               # the H200 image's python3 (results/gpu/check.json)
NODE_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
                  "manylinux2014_x86_64", "manylinux1_x86_64")
# the environment of a refused network: no index, no config's find-links, dead proxies
OFFLINE_ENV = {"PIP_CONFIG_FILE": os.devnull, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": "",
               "PIP_DISABLE_PIP_VERSION_CHECK": "1", "HF_HUB_OFFLINE": "1",
               "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9",
               "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
               "PYTHONNOUSERSITE": "1"}

RUN_SH = """#!/usr/bin/env bash
# On the GPU node, from this folder: install offbyone from wheels/ (no network) beside the
# node's own torch, then run the study; its archive goes to ${{OUT:-.}}/study.tar.gz.
#   bash run.sh [PROFILE] [JOBS] [study options, e.g. --ensemble 5]   (default: {profile} {jobs})
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
profile="${{1:-{profile}}}"; jobs="${{2:-{jobs}}}"; out="${{OUT:-$here}}"
shift $(( $# < 2 ? $# : 2 ))
python3 -m pip install -q --no-index --find-links "$here/wheels" offbyone
cd "$here/repo"
python3 -m offbyone.study run "$profile" --jobs "$jobs" --archive "$out/study.tar.gz" "$@"
"""


class BundleError(RuntimeError):
    pass


def _requirement_name(req: str) -> str:
    return re.split(r"[\s<>=!~;\[(]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def bundled_requirements() -> list[str]:
    """The package's dependencies that the bundle carries: all but STOCK."""
    reqs = md.requires("offbyone") or []
    return [r for r in reqs if "extra ==" not in r and _requirement_name(r) not in STOCK]


def _run(cmd: list[str], **kw) -> None:
    res = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if res.returncode:
        raise BundleError(f"{' '.join(map(str, cmd))} failed ({res.returncode}):\n"
                          f"{res.stdout[-3000:]}\n{res.stderr[-3000:]}")


def _tracked_files(root: Path) -> list[str]:
    """The checkout's files as git sees them (tracked, and new ones it does not ignore), without
    the committed results."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=root, capture_output=True, text=True)
    if out.returncode:
        raise BundleError(f"{root} is not a git checkout: the bundle copies its tracked files")
    return sorted({f for f in out.stdout.split("\0")
                   if f and not f.startswith("results/") and (root / f).is_file()})


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file() and not f.is_symlink())


def make_bundle(out: Path, python_version: str | None = NODE_PYTHON, profile: str = "gpu",
                jobs: int = 4, with_data: list[Path] = ()) -> dict:
    """Write the bundle to `out` (replacing it only once it is whole). `python_version` None:
    wheels for this interpreter and platform (the CPU rehearsal's)."""

    root = repo_root()
    out = Path(out)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent if out.parent.exists()
                                else None))
    try:
        wheels = tmp / "wheels"
        wheels.mkdir()
        _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(root)])
        target = []
        if python_version:
            target = ["--python-version", python_version, "--implementation", "cp"]
            for p in NODE_PLATFORMS:
                target += ["--platform", p]
        _run([sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "-d",
              str(wheels), *target, *bundled_requirements()])
        got_stock = [w.name for w in wheels.glob("*.whl")
                     if _requirement_name(w.name.split("-")[0]) in STOCK]
        for name in got_stock:           # pulled in as someone's dependency: the node has it
            (wheels / name).unlink()
        repo = tmp / "repo"
        for rel in _tracked_files(root):
            src, dst = root / rel, repo / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
        for d in with_data:
            d = Path(d)
            shutil.copytree(d, repo / "data" / d.name)
        (tmp / "run.sh").write_text(RUN_SH.format(profile=profile, jobs=jobs))
        size = folder_bytes(tmp)
        if size > BUNDLE_LIMIT:
            raise BundleError(f"the bundle would be {size / 2**20:.1f} MiB, over "
                              f"{BUNDLE_LIMIT / 2**20:.0f} MiB")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"bundle": str(out), "bytes": size, "wheels": sorted(w.name for w in (out / "wheels").iterdir()),
            "python": python_version or "this interpreter", "left_to_the_node": got_stock}


# --------------------------------------------------------------------------------------------
# The CPU rehearsal: a fresh venv that holds only what a GPU image holds, the bundle, no network

def _distribution_closure(names) -> list:
    """The installed distributions `names` need, with their requirements, recursively."""
    seen, todo, out = set(), [n.lower() for n in names], []
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue                       # an optional requirement this environment lacks
        out.append(dist)
        for req in dist.requires or []:
            if "extra ==" not in req:
                todo.append(_requirement_name(req))
    return out


def stock_venv(path: Path) -> Path:
    """A fresh venv standing in for the node's image: STOCK and what they need, linked from this
    environment (no copy, no download), nothing else. Returns its python."""
    import venv
    venv.EnvBuilder(with_pip=True, clear=True).create(path)
    py = path / "bin" / "python"
    # ensurepip's own setuptools (older than torch asks for) would shadow the image's
    _run([str(py), "-m", "pip", "uninstall", "-y", "-q", "setuptools"],
         env={**os.environ, **OFFLINE_ENV})
    site = path / "stock-site"
    site.mkdir()
    for dist in _distribution_closure(STOCK):
        tops = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        base = Path(dist.locate_file(""))
        for top in tops:
            src = base / top
            if src.exists() and not (site / top).exists() and top != "__pycache__":
                (site / top).symlink_to(src)
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    (Path(purelib) / "_stock_image.pth").write_text(str(site) + "\n")
    return py


def rehearse(work: Path, profile: str = "gpu-quickrehearsal", jobs: int = 2) -> dict:
    """Build a bundle for this interpreter, install it into a stock venv with the network
    refused, run the study's `profile` from it, and unpack the archive it leaves."""
    from .study import unpack

    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    bundle = make_bundle(work / "bundle", python_version=None, profile=profile, jobs=jobs)
    py = stock_venv(work / "node")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "VIRTUAL_ENV"))}
    env.update(OFFLINE_ENV, OUT=str(work / "out"), OMP_NUM_THREADS="1",
               PATH=f"{py.parent}:{env.get('PATH', '')}")
    (work / "out").mkdir(exist_ok=True)
    _run(["bash", str(work / "bundle" / "run.sh"), profile, str(jobs)], env=env)
    archive = work / "out" / "study.tar.gz"
    if not archive.exists():
        raise BundleError(f"the study left no archive at {archive}")
    unpacked = unpack(archive, root=work / "cpu-machine")
    return {"bundle": bundle, "archive": str(archive), "archive_bytes": archive.stat().st_size,
            "unpacked": unpacked}


def main(argv=None):
    ap = argparse.ArgumentParser(description="The GPU node's bundle: make it, or rehearse it on a CPU.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make", help="write the bundle (needs the network, for the wheels)")
    m.add_argument("--out", default="build/gpu-bundle")
    m.add_argument("--python-version", default=NODE_PYTHON,
                   help=f"the node's Python (default {NODE_PYTHON}); 'here' for this interpreter")
    m.add_argument("--profile", default="gpu")
    m.add_argument("--jobs", type=int, default=4)
    m.add_argument("--with-data", nargs="*", default=[], metavar="DIR",
                   help="prepared data folders to carry (a corpus the node cannot make)")
    r = sub.add_parser("rehearse", help="on a CPU: bundle, stock venv, network refused, study, unpack")
    r.add_argument("--work", default="build/gpu-bundle-rehearsal")
    r.add_argument("--profile", default="gpu-quickrehearsal")
    r.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args(argv)
    try:
        if args.cmd == "make":
            pv = None if args.python_version == "here" else args.python_version
            out = make_bundle(Path(args.out), pv, args.profile, args.jobs, args.with_data)
            print(f"bundle {out['bundle']}: {out['bytes'] / 2**20:.1f} MiB, "
                  f"{len(out['wheels'])} wheels for Python {out['python']}\n"
                  f"on the node: OUT=<folder> bash {out['bundle']}/run.sh")
        else:
            out = rehearse(Path(args.work), args.profile, args.jobs)
            print(f"rehearsal passed: bundle {out['bundle']['bytes'] / 2**20:.1f} MiB, archive "
                  f"{out['archive_bytes'] / 1024:.0f} KiB, {len(out['unpacked']['runs'])} runs unpacked")
    except BundleError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
