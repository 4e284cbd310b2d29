"""Guo et al.'s Bigram-Backcopy model as options of the one GPT (issue 24), the first-position
residual peak they measure, and the SGD control."""
import math

import pytest
import torch

from offbyone.config import ConfigError, TrainConfig
from offbyone.metrics import residual_peak, summarize_activations
from offbyone.model import GPT, GPTConfig

from conftest import tiny_train_config

GUO = dict(bias=False, mlp_act="relu", tie_embeddings=False, init="torch")


def test_guo_options_change_what_they_name():
    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=40, block_size=32, n_layer=2, n_head=1, n_embd=64, **GUO))
    assert m.lm_head.weight is not m.wte.weight                      # untied
    assert all(p.dim() >= 2 or "ln" in n for n, p in m.named_parameters())  # no linear biases
    assert not any(n.endswith(".bias") for n, _ in m.named_parameters())
    # PyTorch's default initialisation: embeddings N(0, 1), linears U(+-1/sqrt(fan_in))
    assert abs(m.wte.weight.std().item() - 1.0) < 0.05
    w = m.blocks[0].mlp.c_fc.weight
    assert w.abs().max().item() <= 1 / math.sqrt(64) + 1e-6
    assert w.abs().max().item() > 0.9 / math.sqrt(64)
    # ReLU: the MLP hidden activation is never negative
    seen = []
    m.blocks[0].mlp.hook_hidden.register_forward_hook(lambda mod, i, o: seen.append(o))
    m(torch.randint(0, 40, (2, 32)))
    assert (seen[0] >= 0).all() and (seen[0] == 0).any()
    nano = GPT(GPTConfig(vocab_size=40, block_size=32, n_layer=2, n_head=1, n_embd=64))
    assert nano.lm_head.weight is nano.wte.weight
    assert abs(nano.wte.weight.std().item() - 0.02) < 0.005


@pytest.mark.parametrize("key,value", [("mlp_act", "swish"), ("init", "xavier")])
def test_bad_model_options_name_the_choices(key, value):
    with pytest.raises(ValueError, match="not one of"):
        GPTConfig(**{key: value})


def test_yaml_exponent_strings_are_floats_and_nonsense_is_refused():
    cfg = TrainConfig.load(None, ["lr=3e-4", "min_lr=1e-5"])   # YAML 1.1 reads these as strings
    assert cfg.lr == 3e-4 and cfg.min_lr == 1e-5
    assert TrainConfig.from_dict({"lr": "6e-4"}).lr == 6e-4
    for bad in ("fast", "nan", "inf"):
        with pytest.raises(ConfigError, match="lr must be of type float"):
            TrainConfig.from_dict({"lr": bad})
    with pytest.raises(ConfigError, match="optimizer 'adam' is not one of adamw, sgd"):
        TrainConfig.from_dict({"optimizer": "adam"})


def test_sgd_optimizer_with_momentum():
    m = GPT(GPTConfig(vocab_size=20, block_size=8, n_layer=1, n_head=1, n_embd=16))
    opt = m.configure_optimizer(0.1, 0.03, (0.9, 0.99), "cpu", "sgd", 0.9)
    assert isinstance(opt, torch.optim.SGD)
    assert opt.param_groups[0]["momentum"] == 0.9 and opt.param_groups[1]["weight_decay"] == 0.0
    with pytest.raises(ValueError, match="not one of adamw, sgd"):
        m.configure_optimizer(0.1, 0.03, (0.9, 0.99), "cpu", "lion")


def test_residual_peak_against_a_direct_computation():
    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=30, block_size=16, n_layer=2, n_head=2, n_embd=32, **GUO)).double()
    x = torch.randint(0, 30, (5, 16))
    got = residual_peak(m, x, batch_size=2)            # streamed in batches of 2
    outs = {}
    for name, mod in [("embed", m.hook_embed), ("blocks.0", m.blocks[0].hook_resid),
                      ("blocks.1", m.blocks[1].hook_resid)]:
        mod.register_forward_hook(lambda mod, i, o, name=name: outs.__setitem__(name, o))
    m(x)
    for layer in got["layers"]:
        n = torch.linalg.vector_norm(outs[layer["layer"]], dim=-1)
        assert layer["first_norm"] == pytest.approx(n[:, 0].mean().item(), rel=1e-12)
        assert layer["median_other_norm"] == pytest.approx(n[:, 1:].flatten().median().item(), rel=1e-12)
        assert layer["ratio"] == pytest.approx(layer["first_norm"] / layer["median_other_norm"])
    assert got["max_ratio"] == max(r["ratio"] for r in got["layers"][1:])
    assert m.training                                    # the mode is restored


def test_residual_peak_finds_a_planted_peak():
    m = GPT(GPTConfig(vocab_size=30, block_size=16, n_layer=1, n_head=1, n_embd=32, **GUO))
    x = torch.randint(1, 30, (4, 16))
    x[:, 0] = 0
    base = residual_peak(m, x)["max_ratio"]
    with torch.no_grad():
        m.wte.weight[0] *= 20                            # token 0 (at position 0) made huge
    planted = residual_peak(m, x)
    assert base < 2 and planted["max_ratio"] > 5 and planted["max_ratio_layer"] == "blocks.0"


def test_inf_norm_without_the_last_residual():
    mods = {f"blocks.{i}.{k}": {"kurtosis": 3.0, "inf_norm": 1.0 + i, "n_outliers": 0}
            for i in range(2) for k in ("ln_1", "attn_proj", "resid")}
    mods["ln_f"] = {"kurtosis": 3.0, "inf_norm": 50.0, "n_outliers": 0}
    mods["blocks.1.resid"]["inf_norm"] = 40.0
    s = summarize_activations(mods)
    assert s["anchor"]["max_inf_norm"] == 50.0
    assert s["anchor_inner"]["max_inf_norm"] == 2.0
    assert s["anchor_inner"]["max_inf_norm_module"] in ("blocks.1.ln_1", "blocks.1.attn_proj")


def test_training_logs_the_bos_peak(tmp_path, tiny_corpus, tiny_data):
    from offbyone.train import train
    import json
    cfg = tiny_train_config(tmp_path, tiny_corpus, tiny_data.parent, bos=True,
                            optimizer="sgd", lr=0.03, min_lr=0.003, **GUO)
    train(cfg)
    recs = [json.loads(l) for l in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    evals = [r for r in recs if "val_loss" in r and "bos_ratio" in r]
    assert [r["step"] for r in evals] == [0, 6, 12]
    assert all(len(r["bos_ratio"]) == 3 and len(r["bos_norm"]) == 3 for r in evals)
    # at PyTorch's initialisation the BOS state is one embedding among others: ratio near 1
    assert 0.5 < evals[0]["bos_ratio"][0] < 2


def test_the_gpu_study_declares_guos_measure_and_its_disease_criterion():
    import pandas as pd
    from offbyone.report.stats import PRIMARY, disease_appeared, primary_endpoints
    eps = primary_endpoints("gpu")
    # the CPU study's eight (issue 38): the six, Guo et al.'s peak (log scale), the BOS share
    assert eps == primary_endpoints("testbed_outliers")
    assert eps[:len(PRIMARY)] == PRIMARY and [e.metric for e in eps[len(PRIMARY):]] == [
        "bos_resid_ratio", "outlier_share_pos0"]
    assert eps[len(PRIMARY)].scale == "log" and eps[-1].scale == "linear"
    assert primary_endpoints("gpu-quickrehearsal") == eps and primary_endpoints("cpu") == PRIMARY

    def fin(ratio, gap):
        return pd.DataFrame({"variant": ["softmax"] * 2 + ["softmax1"] * 2,
                             "bos_resid_ratio": [ratio - 0.5, ratio + 0.5, 1.0, 1.0],
                             "gap_W8A8": [gap, gap, 0.0, 0.0],
                             "outlier_share_delimiter": [0.1] * 4})
    assert disease_appeared(fin(5.0, 0.0))["appeared"]           # mean ratio 5: met
    got = disease_appeared(fin(4.9, 0.049))
    assert not got["appeared"] and got["values"]["first-position residual peak"] == pytest.approx(4.9)
    assert disease_appeared(fin(1.0, 0.05))["signs"]["W8A8 gap"]


def test_the_growth_sentence_follows_the_numbers():
    import pandas as pd
    from offbyone.report.peak import growth_sentence

    def curve(start, end):
        return pd.DataFrame({"variant": ["softmax"] * 4, "seed": [0, 0, 1, 1],
                             "step": [0, 100, 0, 100],
                             "bos_ratio": [start, end, start, end]})
    assert growth_sentence(curve(1.0, 3.0), "softmax") == "softmax's peak grew from 1.00 to 3.00 (3.0 times)"
    assert "shrank from 2.00 to 1.00" in growth_sentence(curve(2.0, 1.0), "softmax")
    assert growth_sentence(curve(1.0, 1.04), "softmax") == "softmax's peak stayed near 1.00"
