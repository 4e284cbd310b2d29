import json
import os
import stat

import pytest
import torch

from offbyone.device import DeviceError, pick_device
from offbyone.io import atomic_path, write_csv, write_dir, write_json, write_text, write_torch


def _only(folder):
    return sorted(p.name for p in folder.iterdir())


def test_writers_write_and_leave_no_temporary(tmp_path):
    write_text(tmp_path / "a.txt", "hello")
    write_json(tmp_path / "b.json", {"x": [1, 2]})
    write_csv(tmp_path / "c.csv", [{"k": 1, "v": 2.5}])
    write_torch(tmp_path / "d.pt", {"w": torch.ones(2)})
    assert (tmp_path / "a.txt").read_text() == "hello"
    assert json.loads((tmp_path / "b.json").read_text()) == {"x": [1, 2]}
    assert (tmp_path / "c.csv").read_text().splitlines() == ["k,v", "1,2.5"]
    assert torch.equal(torch.load(tmp_path / "d.pt", weights_only=True)["w"], torch.ones(2))
    assert _only(tmp_path) == ["a.txt", "b.json", "c.csv", "d.pt"]
    mode = stat.S_IMODE(os.stat(tmp_path / "a.txt").st_mode)
    assert mode & 0o044 == 0o644 & ~_umask() & 0o044     # readable as the umask allows, not 0600


def _umask():
    m = os.umask(0)
    os.umask(m)
    return m


def test_a_failure_keeps_the_old_file_and_leaves_nothing_half_written(tmp_path):
    write_text(tmp_path / "r.txt", "old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_path(tmp_path / "r.txt") as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert (tmp_path / "r.txt").read_text() == "old"
    assert _only(tmp_path) == ["r.txt"]
    with pytest.raises(TypeError):
        write_json(tmp_path / "bad.json", {"x": object()})     # not JSON: nothing written
    assert _only(tmp_path) == ["r.txt"]


def test_write_dir_replaces_a_whole_folder_or_nothing(tmp_path):
    write_dir(tmp_path / "d", lambda t: (t / "one").write_text("1"))
    assert _only(tmp_path / "d") == ["one"]

    def fails(t):
        (t / "two").write_text("2")
        raise OSError("disk full")
    with pytest.raises(OSError, match="disk full"):
        write_dir(tmp_path / "d", fails)
    assert _only(tmp_path) == ["d"] and _only(tmp_path / "d") == ["one"]


def test_pick_device_refuses_bad_names_and_names_the_choices():
    assert pick_device("cpu").type == "cpu"
    with pytest.raises(DeviceError, match="auto, cpu, cuda, cuda:N, mps"):
        pick_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="CUDA is not available"):
            pick_device("cuda:0")
