import os
import pickle
import random

import pytest
import torch

from offbyone.checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
from offbyone.model import GPT, GPTConfig


@pytest.fixture
def ckpt(tmp_path):
    cfg = GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=16, attention="sink")
    model = GPT(cfg)
    opt = torch.optim.AdamW(model.parameters())
    path = tmp_path / "ckpt_000001.pt"
    save_checkpoint(path, config={"note": "test"}, model_config=cfg, model=model, optimizer=opt,
                    step=1, rng={"torch": [torch.get_rng_state()]})
    return path, model


def test_round_trip_with_weights_only(ckpt):
    path, model = ckpt
    loaded, state = load_model(path)
    assert state["step"] == 1 and state["model_config"]["attention"] == "sink"
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k
    assert not any(p.name.endswith(".tmp") for p in path.parent.iterdir())  # nothing left over


def test_truncated_checkpoint(ckpt):
    path, _ = ckpt
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match=f"{path.name}.*truncated or corrupt"):
        load_checkpoint(path)


def test_foreign_and_garbage_files(tmp_path):
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match="not an offbyone checkpoint"):
        load_checkpoint(foreign)
    # random bytes make the unpickler raise many kinds of errors (UnpicklingError, IndexError,
    # KeyError, UnicodeDecodeError...): every one must become a CheckpointError naming the file
    garbage = tmp_path / "garbage.pt"
    for seed in range(400):
        garbage.write_bytes(random.Random(seed).randbytes(1000))
        with pytest.raises(CheckpointError, match="garbage.pt"):
            load_checkpoint(garbage)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name, writer in [("zip.pt", lambda p: torch.save({"format": _Evil()}, p)),
                         ("legacy.pt", lambda p: p.write_bytes(pickle.dumps(_Evil())))]:
        path = tmp_path / name
        writer(path)
        with pytest.raises(CheckpointError, match=name):
            load_checkpoint(path)
    assert not (tmp_path / "PWNED").exists()


def test_checkpoint_that_does_not_match_its_model(ckpt):
    path, _ = ckpt
    state = torch.load(path, weights_only=True)
    state["model_config"]["n_embd"] = 32
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="does not match"):
        load_model(path)
