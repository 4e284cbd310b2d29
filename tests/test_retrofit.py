"""Retrofits (issue 26): a trained checkpoint continued as another attention variant.

The weights convert only by adding the target variant's own parameters; the run's checkpoints
say where their weights came from; loading one as the wrong variant is refused."""
import pytest
import torch

from offbyone.checkpoint import (CheckpointError, convert_state, describe_history,
                                 load_checkpoint, load_model)
from offbyone.config import ConfigError, TrainConfig
from offbyone.model import GPT, GPTConfig
from offbyone.train import train

from conftest import tiny_train_config


@pytest.fixture(scope="module")
def source(tmp_path_factory, tiny_corpus, tiny_data):
    """A softmax run of 6 steps (no dropout, so that outputs compare exactly)."""
    tmp = tmp_path_factory.mktemp("source")
    cfg = tiny_train_config(tmp, tiny_corpus, tiny_data.parent, attention="softmax",
                            max_steps=6, checkpoint_fractions=[1.0], dropout=0.0)
    return train(cfg)["final_checkpoint"], cfg


def _retrofit(tmp, source_cfg, ckpt, variant, **kw):
    d = {**source_cfg.to_dict(), "out_dir": str(tmp / variant), "attention": variant,
         "init_from": str(ckpt), "max_steps": 4, "checkpoint_fractions": [0.0, 1.0], **kw}
    return TrainConfig.from_dict(d)


def _logits(model, x):
    with torch.no_grad():
        return model(x)[0]


@pytest.mark.parametrize("variant", ["softmax", "softmax1", "sink"])
def test_retrofit_starts_from_the_source_weights_and_records_its_history(
        tmp_path, source, variant):
    ckpt, scfg = source
    summary = train(_retrofit(tmp_path, scfg, ckpt, variant))
    src = load_checkpoint(ckpt)
    start = load_checkpoint(tmp_path / variant / "ckpt_000000.pt")
    assert start["step"] == 0 and start["model_config"]["attention"] == variant
    # step 0 holds the source's weights, unchanged; a learned sink starts at its initial 0
    for k, v in src["model"].items():
        assert torch.equal(start["model"][k], v), k
    sinks = [k for k in start["model"] if k.endswith(".sink")]
    assert bool(sinks) == (variant == "sink")
    assert all(torch.equal(start["model"][k], torch.zeros_like(start["model"][k])) for k in sinks)
    # every checkpoint of the run says where it came from
    for path in (tmp_path / variant).glob("ckpt_*.pt"):
        (h,) = load_checkpoint(path)["config"]["history"]
        assert h["checkpoint"] == str(ckpt) and h["attention"] == "softmax" and h["step"] == 6
        assert h["seed"] == scfg.seed and len(h["sha256"]) == 64
        assert h["commit"] == src["extra"]["git_sha"] and h["commit"]
    final = load_checkpoint(summary["final_checkpoint"])
    assert final["step"] == 4 and "converted from softmax checkpoint" in describe_history(final)
    # it trained: the weights moved
    assert any(not torch.equal(final["model"][k], v) for k, v in src["model"].items())
    # a run trained from scratch records no history
    assert "history" not in src["config"] and describe_history(src) == ""


def test_a_sink_at_zero_computes_softmax1(tmp_path, source):
    """The learned sink initialised at 0 is softmax1 exactly: the two conversions agree."""
    ckpt, scfg = source
    state = load_checkpoint(ckpt)
    x = torch.randint(0, state["model_config"]["vocab_size"], (2, 16))
    outs = {}
    for v in ("softmax", "softmax1", "sink"):
        m = GPT(GPTConfig(**{**state["model_config"], "attention": v}))
        m.load_state_dict(convert_state(state, m, ckpt))
        outs[v] = _logits(m.eval(), x)
    torch.testing.assert_close(outs["sink"], outs["softmax1"], rtol=1e-6, atol=1e-6)
    assert (outs["softmax1"] - outs["softmax"]).abs().max() > 1e-4   # a different model


def test_conversions_that_would_lose_or_misplace_weights_are_refused(tmp_path, source):
    ckpt, _ = source
    state = load_checkpoint(ckpt)
    mc = state["model_config"]
    sink = GPT(GPTConfig(**{**mc, "attention": "sink"}))
    sink_state = {**state, "model": sink.state_dict(), "model_config": sink.config.to_dict()}
    with pytest.raises(CheckpointError, match=r"would drop its trained parameters .*sink"):
        convert_state(sink_state, GPT(GPTConfig(**mc)), "s.pt")
    with pytest.raises(CheckpointError, match=r"differs in n_embd \(32 there, 64 here\)"):
        convert_state(state, GPT(GPTConfig(**{**mc, "n_embd": 64})), "s.pt")


def test_loading_a_retrofitted_checkpoint_as_the_wrong_variant_is_refused(tmp_path, source):
    ckpt, scfg = source
    summary = train(_retrofit(tmp_path, scfg, ckpt, "softmax1"))
    path = summary["final_checkpoint"]
    model, _ = load_model(path, attention="softmax1")
    assert model.config.attention == "softmax1"
    with pytest.raises(CheckpointError, match=r"is a softmax1 model \(converted from softmax "
                                              r"checkpoint .*\); it cannot be loaded as softmax"):
        load_model(path, attention="softmax")


def test_a_retrofit_resumes_with_its_history(tmp_path, source):
    ckpt, scfg = source
    cfg = _retrofit(tmp_path, scfg, ckpt, "sink", checkpoint_fractions=[0.0, 0.5, 1.0])

    class Stop(Exception):
        pass

    def stop(step):
        if step == 3:
            raise Stop
    with pytest.raises(Stop):
        train(cfg, on_step=stop)
    summary = train(cfg)             # resumes from step 2, not from the source again
    assert load_checkpoint(summary["final_checkpoint"])["config"]["history"][0]["checkpoint"] \
        == str(ckpt)
    ref = train(_retrofit(tmp_path / "ref", scfg, ckpt, "sink",
                          checkpoint_fractions=[0.0, 0.5, 1.0]))
    a, b = (load_checkpoint(s["final_checkpoint"])["model"] for s in (summary, ref))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_fractions_admit_step_zero_only_when_asked():
    assert TrainConfig(max_steps=10, checkpoint_fractions=[0.0, 1.0]).checkpoint_steps() == [0, 10]
    assert TrainConfig(max_steps=10, checkpoint_fractions=[0.01, 1.0]).checkpoint_steps() == [1, 10]
    with pytest.raises(ConfigError, match=r"\[0, 1\] and include 1.0"):
        TrainConfig(checkpoint_fractions=[-0.5, 1.0])


def test_retrained_sources_are_said_with_how_much_they_moved(tmp_path):
    """One quantity, one number: sources trained again are compared with the source study's
    committed checkpoints of the same seeds, and the sentence gives both."""
    import pandas as pd
    from offbyone.report import retrofit as RF

    class R:
        root = tmp_path
    (tmp_path / "results" / "src").mkdir(parents=True)
    committed = pd.DataFrame({"variant": ["softmax"] * 2, "seed": [0, 1], "step": [30, 30],
                              "max_steps": [30, 30], "first_position": [0.24, 0.242],
                              "gap_W8A8": [0.0003, 0.0004], "val_loss": [2.2971, 2.2975]})
    committed.to_csv(tmp_path / "results" / "src" / "runs.csv", index=False)
    (tmp_path / "results" / "src" / "provenance.json").write_text('{"commit": "abc"}')
    F = committed.assign(variant=RF.SOURCE, first_position=[0.25, 0.248])
    text = RF.sources_sentence(R, "src", "softmax", F, {"commit": "def"})
    assert "trained again" in text and "$0.249$ against $0.241$" in text
    same = RF.sources_sentence(R, "src", "softmax", committed.assign(variant=RF.SOURCE), {})
    assert same.startswith("The sources are the committed checkpoints")
