"""SIGKILL `make reproduce` at random moments: every restart continues, nothing that looks
finished is ever partial, and the final results equal those of an uninterrupted run."""
import json
import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from offbyone.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
VENV = REPO / ".venv"


def _sandbox(dest: Path) -> Path:
    """A copy of the working tree (tracked and untracked-not-ignored files, mtimes kept) that
    shares this checkout's virtual environment and downloaded corpus archive."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        if (REPO / f).is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / f, dest / f)
    for archive in (REPO / "data" / "cache").glob("*.tar.gz"):
        (dest / "data" / "cache").mkdir(parents=True, exist_ok=True)
        shutil.copy2(archive, dest / "data" / "cache" / archive.name)
    return dest


def _make(cwd: Path, **kw):
    return subprocess.Popen(["make", "reproduce", "PROFILE=smoke", f"VENV={VENV}"], cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, **kw)


def _descendants(pid: int) -> list[int]:
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def _kill_tree(proc):
    for p in _descendants(proc.pid):       # the notebook kernels too: they are descendants
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def _finished_files_are_whole(root: Path):
    """Every file with a finished-looking name is complete."""
    for nb in (root / "build" / "smoke" / "notebooks").glob("[!.]*.ipynb"):
        if nb.name.endswith(".failed.ipynb"):
            continue
        cells = json.loads(nb.read_text())["cells"]
        assert all(c.get("execution_count") for c in cells if c["cell_type"] == "code"), nb
    for ck in (root / "runs").rglob("ckpt_*.pt"):
        load_checkpoint(ck)
    for js in list((root / "runs").rglob("*.json")) + list((root / "results").rglob("*.json")):
        json.loads(js.read_text())
    pdf = root / "build" / "paper" / "offbyone.pdf"
    if pdf.exists():
        assert subprocess.run(["pdfinfo", str(pdf)], capture_output=True).returncode == 0
    for p in root.rglob("*"):
        assert not p.name.endswith(".tmp") or p.name.startswith("."), p   # temporaries are hidden


def _results(root: Path) -> dict:
    out = {}
    for f in sorted((root / "runs" / "smoke").rglob("*.metrics.json")):
        r = json.loads(f.read_text())
        for k in ("provenance", "checkpoint"):
            r.pop(k)
        for k in ("out_dir", "data_root"):
            r["config"].pop(k)
        r["data"].pop("dir")                    # where the sandbox is, not what was measured
        out[str(f.relative_to(root))] = r
    for f in sorted((root / "runs" / "smoke").rglob("ckpt_*.pt")):
        out[str(f.relative_to(root))] = {k: v.tolist() for k, v in load_checkpoint(f)["model"].items()}
    return out


@pytest.mark.slow
def test_sigkill_make_reproduce_loses_nothing(tmp_path):
    if shutil.which("latexmk") is None or shutil.which("pdfinfo") is None:
        pytest.skip("needs TeX Live and poppler-utils (make tex)")
    clean = _sandbox(tmp_path / "clean")
    assert _make(clean).wait() == 0
    killed = _sandbox(tmp_path / "killed")
    rng = random.Random(0)
    for i in range(4):
        proc = _make(killed)
        time.sleep(rng.uniform(3, 30))
        if proc.poll() is not None:
            break
        _kill_tree(proc)
        _finished_files_are_whole(killed)
    assert _make(killed).wait() == 0
    _finished_files_are_whole(killed)
    a, b = _results(clean), _results(killed)
    assert a.keys() == b.keys() and len(a) > 8
    for k in a:
        assert a[k] == b[k], k
    assert (killed / "build" / "paper" / "offbyone.pdf").stat().st_size > 10_000
