"""The reader's path: the source notebooks run top to bottom in a fresh kernel as a reader
would run them, and `make lab` serves them (headless, through its REST API)."""
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import papermill as pm
import pytest

REPO = Path(__file__).resolve().parents[1]
DEFAULT = "cpu"        # the default profile of the notebooks, whose results are committed


def _reader_repo(tmp_path: Path) -> Path:
    """A checkout as a reader has it: the code, profiles, notebooks, the paper's sources and
    the committed results; no runs/, no generated paper inputs."""
    root = tmp_path / "repo"
    root.mkdir()
    for name in ("lib", "configs"):
        (root / name).symlink_to(REPO / name)
    (REPO / "data").mkdir(exist_ok=True)
    (root / "data").symlink_to(REPO / "data")          # prepared corpora are a shared cache
    shutil.copytree(REPO / "notebooks", root / "notebooks")
    shutil.copytree(REPO / "paper", root / "paper", ignore=shutil.ignore_patterns("generated"))
    shutil.copytree(REPO / "results" / DEFAULT, root / "results" / DEFAULT)
    return root


def _run(root: Path, name: str, **params) -> dict:
    out = root / "executed" / f"{name}.ipynb"
    out.parent.mkdir(exist_ok=True)
    pm.execute_notebook(str(root / "notebooks" / f"{name}.ipynb"), str(out), parameters=params,
                        kernel_name="python3", progress_bar=False, cwd=str(root))
    return json.loads(out.read_text())


def _text(nb: dict) -> str:
    return "".join("".join(o.get("text", "")) for c in nb["cells"] for o in c.get("outputs", []))


@pytest.mark.skipif(not (REPO / "results" / DEFAULT / "runs.csv").exists(),
                    reason=f"results/{DEFAULT}/ is not committed in this checkout")
def test_every_notebook_runs_as_a_reader_runs_it(tmp_path):
    root = _reader_repo(tmp_path)
    nb1 = _run(root, "01_prepare_data")                          # its defaults: smoke's corpus
    assert "Prepares 'shakespeare' (char)" in _text(nb1)
    nb2 = _run(root, "02_train", profile="smoke")                # one tiny run, then measure it
    assert "This notebook trains softmax1, seed 0, of profile smoke" in _text(nb2)
    nb3 = _run(root, "03_measure", profile="smoke")
    assert "This notebook measures the 2 checkpoints" in _text(nb3)
    assert (root / "runs" / "smoke" / "softmax1-s0" / "measurements.json").exists()
    # the report and the benchmark figures, with their default parameters, from the committed
    # results alone (the reader has no runs/cpu)
    res = root / "results" / DEFAULT
    committed = {str(p.relative_to(res)): p.read_bytes() for p in res.rglob("*") if p.is_file()}
    nb4 = _run(root, "04_report")
    assert f"read from results/{DEFAULT}" in _text(nb4)
    _run(root, "05_bench")
    macros = (root / "paper" / "generated" / "macros.tex").read_text()
    assert "\\newcommand{\\ProfileName}{cpu}" in macros
    assert (root / "paper" / "generated" / "bench_macros.tex").exists()
    # reading the committed results leaves them as they were
    assert committed == {str(p.relative_to(res)): p.read_bytes() for p in res.rglob("*")
                         if p.is_file()}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.status, r.read()


def test_make_lab_serves_the_notebooks_on_localhost_with_a_token():
    pytest.importorskip("jupyterlab", reason="JupyterLab is the optional `lab` extra")
    port, token = _free_port(), "offbyone-test-token"
    env = {**os.environ, "JUPYTER_TOKEN": token}
    proc = subprocess.Popen(["make", "--no-print-directory", "lab", f"LAB_PORT={port}",
                             "LAB_ARGS=--no-browser"], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                status, page = _get(f"{base}/lab?token={token}")
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError("JupyterLab did not start:\n" + proc.stdout.read())
                time.sleep(0.5)
        assert status == 200 and b"JupyterLab" in page
        with pytest.raises(urllib.error.HTTPError) as e:      # no token, no notebooks
            _get(f"{base}/api/contents/04_report.ipynb")
        assert e.value.code == 403
        status, body = _get(f"{base}/api/contents/04_report.ipynb?token={token}")
        nb = json.loads(body)
        assert status == 200 and nb["type"] == "notebook"
        assert nb["content"]["cells"][0]["source"].startswith("# 04")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
    if os.geteuid() == 0:
        assert "running as root: starting JupyterLab with --allow-root" in out
