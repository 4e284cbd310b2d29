"""Staleness follows the code that produced the numbers: a report-only commit leaves a results
folder current, a change to code that trained or measured it does not (provenance.staleness_of),
checked in a throwaway clone of this repository with commits of its own."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from offbyone.profiles import profile_files, repo_root
from offbyone.provenance import NOT_MEASURING, loaded_code, producing_code, staleness_of

ROOT = repo_root()


def _git(cwd, *args) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                          text=True).stdout.strip()


@pytest.fixture
def clone(tmp_path):
    """A clone of this checkout's HEAD with a committer, where commits cost nothing."""
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    dest = tmp_path / "clone"
    _git(tmp_path, "clone", "-q", "--no-checkout", str(ROOT), str(dest))
    _git(dest, "checkout", "-q", _git(ROOT, "rev-parse", "HEAD"))
    _git(dest, "config", "user.email", "test@example.invalid")
    _git(dest, "config", "user.name", "test")
    return dest


def _commit(repo: Path, path: str, line: str) -> str:
    f = repo / path
    f.write_text(f.read_text() + line)
    _git(repo, "commit", "-q", "-am", f"change {path}")
    return _git(repo, "rev-parse", "HEAD")


def _provenance(commit: str, code=None) -> dict:
    prov = {"profile": "cpu", "commit": commit, "measured_by": [commit], "trained_by": [commit],
            "configs": profile_files("cpu")}
    return prov | ({"code": code} if code is not None else {})


# the code a measurement records as loaded (as measure() does), and the fallback without it
CODE = ["lib/offbyone/model.py", "lib/offbyone/measure.py", "lib/offbyone/train.py",
        "lib/offbyone/provenance.py"]


@pytest.mark.parametrize("code", [CODE, None], ids=["recorded code", "before the record"])
def test_a_report_only_commit_leaves_the_numbers_current_and_a_model_change_does_not(clone, code):
    produced = _git(clone, "rev-parse", "HEAD")
    prov = _provenance(produced, code)
    assert staleness_of(prov, root=clone) == ""
    # the report re-derives tables and macros from the numbers: a change there is not staleness,
    # nor is a new profile that the results' profiles do not name
    _commit(clone, "lib/offbyone/report/latex.py", "# a report-only change\n")
    (clone / "configs" / "another_study.yaml").write_text("variants: [softmax]\nseeds: [0]\n")
    _git(clone, "add", "configs/another_study.yaml")
    _git(clone, "commit", "-q", "-m", "a new profile")
    assert staleness_of(prov, root=clone) == ""
    # a change to the model that trained and measured them is
    _commit(clone, "lib/offbyone/model.py", "# a model change\n")
    note = staleness_of(prov, root=clone)
    assert "lib/offbyone/model.py" in note and "may be stale" in note
    # and so is a change to one of the results' own profiles
    _git(clone, "reset", "-q", "--hard", "HEAD~1")
    assert staleness_of(prov, root=clone) == ""
    _commit(clone, "configs/testbed.yaml", "# the testbed companion changed\n")
    assert "configs/testbed.yaml" in staleness_of(prov, root=clone)


def test_every_commit_that_trained_or_measured_counts(clone):
    first = _git(clone, "rev-parse", "HEAD")
    second = _commit(clone, "lib/offbyone/metrics.py", "# measured by a later commit\n")
    prov = _provenance(second, CODE + ["lib/offbyone/metrics.py"]) | {"trained_by": [first]}
    note = staleness_of(prov, root=clone)          # trained before metrics.py changed
    assert first[:10] in note and "lib/offbyone/metrics.py" in note
    assert staleness_of(prov | {"trained_by": [second]}, root=clone) == ""
    # the commit that wrote the derived files is not among them
    later = _commit(clone, "lib/offbyone/report/prose.py", "# the report, later\n")
    assert staleness_of(prov | {"trained_by": [second], "commit": later}, root=clone) == ""
    assert "uncommitted changes" in staleness_of(
        prov | {"trained_by": [second], "measured_by": [second + "-dirty"]}, root=clone)


def test_the_recorded_code_is_the_package_files_that_ran():
    import offbyone.measure  # noqa: F401  (loads what measuring needs)
    code = loaded_code()
    assert "lib/offbyone/measure.py" in code and "lib/offbyone/model.py" in code
    assert all(c.startswith("lib/offbyone/") and c.endswith(".py") for c in code)
    # the report never runs while a checkpoint is measured (a fresh process shows it)
    out = subprocess.run([sys.executable, "-c", "import offbyone.measure, offbyone.train, json; "
                          "from offbyone.provenance import loaded_code; "
                          "print(json.dumps(loaded_code()))"],
                         capture_output=True, text=True, check=True, cwd=ROOT)
    fresh = json.loads(out.stdout)
    assert not [c for c in fresh if c.startswith("lib/offbyone/report/")]
    paths, exclude = producing_code(_provenance("x", fresh))
    assert "lib/offbyone/provenance.py" not in paths and exclude == ()
    assert producing_code(_provenance("x")) == (("lib", *profile_files("cpu")), NOT_MEASURING)
    old = {"profile": "cpu", "commit": "x"}                # a provenance.json from before "configs"
    assert producing_code(old) == (("lib", *profile_files("cpu")), NOT_MEASURING)
    assert producing_code({"profile": "gone", "commit": "x"}) == (("lib", "configs"), NOT_MEASURING)
