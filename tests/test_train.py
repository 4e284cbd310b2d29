import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from offbyone import train as train_mod
from offbyone.checkpoint import load_checkpoint
from offbyone.config import ConfigError, TrainConfig
from offbyone.train import list_checkpoints, lr_at, train

from conftest import tiny_train_config

REPO = Path(__file__).resolve().parents[1]


class Interrupt(Exception):
    pass


def _weights(path):
    return load_checkpoint(path)["model"]


def test_training_lowers_validation_loss_and_logs(tmp_path, tiny_corpus, tiny_data):
    cfg = tiny_train_config(tmp_path, tiny_corpus, tiny_data.parent, max_steps=40,
                            eval_interval=20, checkpoint_fractions=[1.0])
    summary = train(cfg)
    log = [json.loads(l) for l in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    vals = [r["val_loss"] for r in log if "val_loss" in r and "event" not in r]
    assert len(vals) == 3 and vals[-1] < vals[0] - 0.5
    assert summary["val_loss"] == vals[-1]
    assert all(r["tokens_per_s"] > 0 for r in log if "tokens_per_s" in r)
    state = load_checkpoint(summary["final_checkpoint"])
    assert state["config"] == cfg.to_dict() and state["step"] == 40
    assert state["model_config"]["attention"] == "softmax1"
    # a finished run is not trained again
    mtime = Path(summary["final_checkpoint"]).stat().st_mtime_ns
    assert train(cfg)["val_loss"] == summary["val_loss"]
    assert Path(summary["final_checkpoint"]).stat().st_mtime_ns == mtime


@pytest.mark.parametrize("variant", ["softmax1", "sink"])
def test_resume_after_interruption_is_bit_identical(tmp_path, tiny_corpus, tiny_data, variant):
    kw = dict(attention=variant, max_steps=12, checkpoint_fractions=[0.25, 0.5, 1.0])
    full = tiny_train_config(tmp_path / "a", tiny_corpus, tiny_data.parent, **kw)
    ref = train(full)

    broken = tiny_train_config(tmp_path / "b", tiny_corpus, tiny_data.parent, **kw)

    def die(step):
        if step == 8:   # after the checkpoint at step 6, before the one at 12
            raise Interrupt

    with pytest.raises(Interrupt):
        train(broken, on_step=die)
    assert [p.name for p in list_checkpoints(broken.out_dir)] == ["ckpt_000003.pt", "ckpt_000006.pt"]
    resumed = train(broken)
    a, b = _weights(ref["final_checkpoint"]), _weights(resumed["final_checkpoint"])
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["val_loss"] == ref["val_loss"]
    # the log of the resumed run holds the same losses as the uninterrupted one
    strip = lambda p: [(r["step"], r.get("train_loss"), r.get("val_loss"))
                       for r in map(json.loads, (Path(p) / "log.jsonl").read_text().splitlines())
                       if "event" not in r]
    assert strip(full.out_dir) == strip(broken.out_dir)


def test_resume_refuses_a_different_config(tmp_path, tiny_corpus, tiny_data):
    cfg = tiny_train_config(tmp_path, tiny_corpus, tiny_data.parent, max_steps=4,
                            checkpoint_fractions=[0.5, 1.0])
    train(cfg)
    other = tiny_train_config(tmp_path, tiny_corpus, tiny_data.parent, max_steps=4,
                              checkpoint_fractions=[0.5, 1.0], lr=1e-2)
    with pytest.raises(ConfigError, match="lr"):
        train(other)


def test_nan_loss_stops_training_naming_step_and_checkpoint(tmp_path, tiny_corpus, tiny_data,
                                                          monkeypatch):
    calls = {"n": 0}
    real_forward = train_mod.GPT.forward

    def poisoned(self, idx, targets=None):
        logits, loss = real_forward(self, idx, targets)
        if self.training:
            calls["n"] += 1
            if calls["n"] == 8:
                loss = loss * float("nan")
        return logits, loss

    monkeypatch.setattr(train_mod.GPT, "forward", poisoned)
    cfg = tiny_train_config(tmp_path, tiny_corpus, tiny_data.parent, max_steps=12,
                            checkpoint_fractions=[0.5, 1.0])
    with pytest.raises(FloatingPointError, match=r"step 8 \(attention softmax1.*ckpt_000006"):
        train(cfg)


def test_lr_schedule():
    cfg = TrainConfig(max_steps=100, warmup_steps=10, lr=1.0, min_lr=0.1)
    assert lr_at(0, cfg) < lr_at(5, cfg) < lr_at(9, cfg) <= 1.0
    assert lr_at(10, cfg) == pytest.approx(1.0)
    assert lr_at(55, cfg) == pytest.approx(0.55)
    assert lr_at(100, cfg) == pytest.approx(0.1)


@pytest.mark.parametrize("overrides,match", [
    ({"n_layers": 2}, "unknown configuration key.*'n_layers'.*valid keys"),
    ({"max_steps": -5}, "max_steps must be >= 1"),
    ({"max_steps": "many"}, "max_steps must be of type int"),
    ({"lr": "fast"}, "lr must be of type float"),
    ({"bos": 1}, "bos must be of type bool"),
    ({"attention": "softmax2"}, "softmax, softmax1, sink"),
    ({"checkpoint_fractions": [0.5]}, "include 1.0"),
    ({"n_embd": 30, "n_head": 4}, "divisible"),
])
def test_bad_config_is_refused(overrides, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig.from_dict(overrides)


def test_yaml_and_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("n_layer: 2\nlr: 3.0e-3\ncheckpoint_fractions: [0.5, 1.0]\n")
    cfg = TrainConfig.load(f, ["attention=sink", "bos=true", "checkpoint_fractions=0.25,1.0"])
    assert (cfg.n_layer, cfg.lr, cfg.attention, cfg.bos) == (2, 3e-3, "sink", True)
    assert cfg.checkpoint_fractions == (0.25, 1.0)
    with pytest.raises(ConfigError, match="key=value"):
        TrainConfig.load(None, ["lr"])
    f.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        TrainConfig.load(f)


def test_cli_refuses_bad_keys_before_any_work(tmp_path):
    out = tmp_path / "never"
    res = subprocess.run([sys.executable, "-m", "offbyone.train", "--set", f"out_dir={out}",
                          "max_step=3"], capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode != 0
    assert "unknown configuration key 'max_step'" in res.stderr
    assert not out.exists()


def test_torchrun_ddp_two_processes_agree(tmp_path, tiny_corpus, tiny_data):
    """Data-parallel training starts on CPU with gloo, and both ranks end with equal weights."""
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "ddp"
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "offbyone.train",
           "--set", f"out_dir={out}", f"corpus={tiny_corpus}", f"data_root={tiny_data.parent}",
           "n_layer=2", "n_head=2", "n_embd=32", "block_size=16", "batch_size=4", "max_steps=6",
           "eval_interval=3", "eval_batches=1", "log_interval=3", "progress=false",
           "checkpoint_fractions=0.5,1.0"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stdout[-4000:] + "\n---- stderr ----\n" + res.stderr[-12000:]
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["ddp_params_agree"] is True
    state = load_checkpoint(out / "ckpt_000006.pt")
    assert len(state["rng"]["data"]) == 2
    assert not torch.equal(state["rng"]["data"][0], state["rng"]["data"][1])  # ranks see other data


def test_disk_full_while_checkpointing_leaves_nothing_half_written(tmp_path, tiny_corpus,
                                                                   tiny_data, monkeypatch):
    import offbyone.checkpoint as ck
    real_save = torch.save

    def full_disk(obj, f, *a, **kw):
        real_save(obj, f, *a, **kw)          # bytes reach the temporary file, then the disk fills
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ck.torch, "save", full_disk)
    cfg = tiny_train_config(tmp_path, tiny_corpus, tiny_data.parent, max_steps=4,
                            checkpoint_fractions=[0.5, 1.0])
    with pytest.raises(OSError, match=r"could not write .*ckpt_000002.pt: .*No space"):
        train(cfg)
    leftovers = [p.name for p in Path(cfg.out_dir).iterdir() if p.name not in ("log.jsonl", ".lock")]
    assert leftovers == []                   # no checkpoint, no temporary file, no summary


def test_unwritable_output_folder_is_a_clear_error(tmp_path, tiny_corpus, tiny_data):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    cfg = tiny_train_config(tmp_path, tiny_corpus, tiny_data.parent, out_dir=str(blocker / "run"))
    with pytest.raises(OSError, match="cannot write to the run folder .*a_file/run"):
        train(cfg)


def test_a_second_trainer_of_the_same_run_waits_for_the_first(tmp_path, tiny_corpus, tiny_data):
    import fcntl
    cfg = tiny_train_config(tmp_path, tiny_corpus, tiny_data.parent, max_steps=4,
                            checkpoint_fractions=[1.0])
    Path(cfg.out_dir).mkdir(parents=True)
    holder = open(Path(cfg.out_dir) / ".lock", "w")
    fcntl.flock(holder, fcntl.LOCK_EX)
    import threading
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("s", train(cfg)))
    t.start()
    t.join(timeout=3)
    assert t.is_alive() and not list_checkpoints(cfg.out_dir)   # blocked while the lock is held
    holder.close()
    t.join(timeout=120)
    assert result["s"]["steps"] == 4


def test_resume_accepts_keys_added_later_at_their_default(tmp_path, tiny_corpus, tiny_data):
    cfg = tiny_train_config(tmp_path, tiny_corpus, tiny_data.parent, max_steps=4,
                            checkpoint_fractions=[0.5, 1.0])
    with pytest.raises(Interrupt):
        train(cfg, on_step=lambda s: (_ for _ in ()).throw(Interrupt) if s == 3 else None)
    path = list_checkpoints(cfg.out_dir)[-1]
    state = torch.load(path, weights_only=True)
    del state["config"]["clip_alpha"]                # a checkpoint from before that key existed
    torch.save(state, path)
    assert train(cfg)["steps"] == 4
    with pytest.raises(ConfigError, match="clip_alpha"):   # a value other than the default is refused
        train(tiny_train_config(tmp_path, tiny_corpus, tiny_data.parent, max_steps=4,
                                checkpoint_fractions=[0.5, 1.0], clip_alpha=2.0))


def test_model_options_are_declared_once_in_gptconfig():
    from dataclasses import fields

    from offbyone.config import MODEL_KEYS, parse_overrides
    from offbyone.model import GPTConfig
    assert set(MODEL_KEYS) == {f.name for f in fields(GPTConfig)} - {"vocab_size"}
    assert set(TrainConfig.keys()) >= set(MODEL_KEYS)
    cfg = TrainConfig.from_dict({"n_layer": 3, "attention": "sink", "sink_init": 1, "lr": 2e-3})
    assert cfg.model == GPTConfig(n_layer=3, attention="sink", sink_init=1.0)
    assert isinstance(cfg.sink_init, float)                        # coerced by GPTConfig's type
    assert cfg.model_config(99) == GPTConfig(vocab_size=99, n_layer=3, attention="sink", sink_init=1.0)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg             # flat keys round-trip
    cfg.attention = "softmax1"                                      # writes through to the model
    assert cfg.model.attention == "softmax1"
    with pytest.raises(ConfigError, match="unknown configuration key 'n_layers'; valid keys: out_dir"):
        parse_overrides(["n_layers=2"], TrainConfig.keys())
    assert parse_overrides(["keeps=0,1"], ["keeps"], list_keys=("keeps",)) == {"keeps": [0, 1]}
