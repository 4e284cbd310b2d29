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


# the learned sink's own learning rate (issue 37): the sink's logit barely moved at lr 3e-4 in
# the first retrofit, so a retrofit may give it its own optimizer parameter group

def _sink_model(attention="sink"):
    torch.manual_seed(0)
    return GPT(GPTConfig(attention=attention, vocab_size=11, n_layer=2, n_head=2, n_embd=16,
                         block_size=8))


def test_sink_lr_puts_only_the_learned_sinks_in_a_group_of_their_own():
    model = _sink_model()
    sinks = {id(p) for n, p in model.named_parameters() if n.endswith(".sink")}
    assert len(sinks) == 2
    # unset: the two groups as before, the sinks among the undecayed parameters at lr
    g0 = model.configure_optimizer(0.1, 1e-3, (0.9, 0.99), "cpu").param_groups
    assert len(g0) == 2 and sinks <= {id(p) for p in g0[1]["params"]}
    # set: a third group holding exactly the sinks, undecayed, at sink_lr
    g = model.configure_optimizer(0.1, 1e-3, (0.9, 0.99), "cpu", sink_lr=3e-2).param_groups
    assert len(g) == 3 and {id(p) for p in g[2]["params"]} == sinks
    assert g[2]["weight_decay"] == 0.0 and g[2]["lr"] == pytest.approx(3e-2)
    assert not sinks & {id(p) for p in g[0]["params"] + g[1]["params"]}
    assert sum(len(x["params"]) for x in g) == len(list(model.parameters()))
    # a variant without a learned sink has nothing to put there
    assert len(_sink_model("softmax1").configure_optimizer(
        0.1, 1e-3, (0.9, 0.99), "cpu", sink_lr=3e-2).param_groups) == 2
    with pytest.raises(ValueError, match="sink_lr must be >= 0"):
        model.configure_optimizer(0.1, 1e-3, (0.9, 0.99), "cpu", sink_lr=-1.0)
    with pytest.raises(ConfigError, match="sink_lr must be >= 0"):
        TrainConfig(sink_lr=-1e-3)


@pytest.mark.parametrize("kind", ["adamw", "sgd"])
def test_the_sink_takes_steps_of_its_own_learning_rate_on_the_runs_schedule(kind):
    from offbyone.train import _set_lr, lr_at
    cfg = TrainConfig(lr=1e-3, min_lr=1e-4, warmup_steps=3, max_steps=10, sink_lr=5e-2)
    model = _sink_model()
    opt = model.configure_optimizer(0.0, cfg.lr, (0.9, 0.99), "cpu", kind, 0.0, cfg.sink_lr)
    x = torch.randint(0, 11, (4, 8))
    for step in (0, 5):      # in the warm-up and in the decay: the ratio is the schedule's
        lr = _set_lr(opt, lr_at(step, cfg))
        assert opt.param_groups[0]["lr"] == opt.param_groups[1]["lr"] == lr
        assert opt.param_groups[2]["lr"] == pytest.approx(lr * 50)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt.zero_grad()
    model(x, x)[1].backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    opt.step()
    for n, p in model.named_parameters():
        g, moved = grads[n], p.detach() - before[n]
        rate = lr * (50 if n.endswith(".sink") else 1)
        if kind == "sgd":    # no momentum, no decay: exactly -rate * grad
            torch.testing.assert_close(moved, -rate * g)
        elif n.endswith(".sink"):
            # AdamW's first step moves a parameter by its rate times the sign of its gradient
            # (eps aside)
            torch.testing.assert_close(moved, -rate * torch.sign(g), rtol=1e-3, atol=1e-9)


def test_a_retrofit_with_its_own_sink_lr_moves_the_sink_further_and_resumes_exactly(
        tmp_path, source):
    ckpt, scfg = source

    class Stop(Exception):
        pass

    def stop(step):
        if step == 3:
            raise Stop
    cfgs = {r: _retrofit(tmp_path / str(r), scfg, ckpt, "sink", sink_lr=r,
                         checkpoint_fractions=[0.0, 0.5, 1.0]) for r in (0.0, 0.1)}
    with pytest.raises(Stop):
        train(cfgs[0.1], on_step=stop)
    resumed = load_checkpoint(train(cfgs[0.1])["final_checkpoint"])
    ref = load_checkpoint(train(_retrofit(tmp_path / "ref", scfg, ckpt, "sink", sink_lr=0.1,
                                          checkpoint_fractions=[0.0, 0.5, 1.0]))["final_checkpoint"])
    assert all(torch.equal(resumed["model"][k], ref["model"][k]) for k in ref["model"])
    plain = load_checkpoint(train(cfgs[0.0])["final_checkpoint"])
    sinks = [k for k in ref["model"] if k.endswith(".sink")]
    moved = {r: max(c["model"][k].abs().max().item() for k in sinks)     # each starts at 0
             for r, c in ((0.1, ref), (0.0, plain))}
    assert moved[0.1] > 10 * moved[0.0] > 0
    assert ref["config"]["sink_lr"] == 0.1
