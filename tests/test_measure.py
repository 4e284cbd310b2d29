import json

import pytest

from offbyone.config import ConfigError
from offbyone.measure import MeasureConfig, measure, results_path
from offbyone.metrics import ANCHOR_KINDS
from offbyone.train import train

from conftest import tiny_train_config

SMALL = dict(act_seqs=4, loss_seqs=8, calib_batches=2, calib_batch_size=4,
             bit_widths=[[8, 8], [4, 4]])


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tiny_corpus, tiny_data):
    out = {}
    for variant in ("softmax", "sink"):
        tmp = tmp_path_factory.mktemp(variant)
        cfg = tiny_train_config(tmp, tiny_corpus, tiny_data.parent, attention=variant,
                                max_steps=10, bos=True, checkpoint_fractions=[1.0])
        out[variant] = train(cfg)["final_checkpoint"]
    return out


@pytest.mark.parametrize("variant", ["softmax", "sink"])
def test_measure_writes_one_tidy_file(checkpoints, variant):
    r = measure(checkpoints[variant], SMALL, verbose=False)
    path = results_path(checkpoints[variant])
    assert json.loads(path.read_text()) == r
    assert r["variant"] == variant and r["step"] == 10 and r["config"]["bos"] is True
    assert set(r["losses"]) >= {"val", "test", "val_bits_per_token", "test_bits_per_token"}
    assert r["activations"]["all"]["avg_kurtosis"] > 1
    assert len(r["attention"]["first_position"]) == 2          # layers
    assert len(r["attention"]["first_position"][0]) == 2       # heads
    assert r["attention_T64"]["T"] == 16                        # capped at the model's context
    abst = r["attention"]["mean_abstention"]
    assert (abst > 0) if variant == "sink" else (abs(abst) < 1e-6)
    # the learned sinks' logits, read from the checkpoint's own weights (blocks x heads)
    if variant == "sink":
        import torch
        state = torch.load(checkpoints[variant], weights_only=True)["model"]
        assert r["sink_logits"] == [state[f"blocks.{i}.attn.sink"].tolist() for i in range(2)]
        assert any(x != 0.0 for block in r["sink_logits"] for x in block)   # it trained
    else:
        assert r["sink_logits"] is None
    assert [q["config"] for q in r["quant"]] == ["W8A8", "W4A4", "legacy_W8A8"]
    assert [q["setup"] for q in r["quant"]] == ["fp32_head", "fp32_head", "linear_inputs"]
    assert [q["weight_method"] for q in r["quant"]] == ["mse", "mse", "minmax"]
    assert r["quant"][0]["fp_loss"] == r["losses"]["val"]
    # the headline aggregates are over the anchor's modules, a subset of all measured ones
    anchor, every = r["activations"]["anchor"], r["activations"]["all"]
    assert anchor["max_kurtosis"] <= every["max_kurtosis"]
    assert anchor["max_kurtosis_module"].rsplit(".", 1)[-1] in ANCHOR_KINDS
    assert r["provenance"]["git_sha"] and r["provenance"]["measure_wall_s"] > 0
    # with a BOS token, position 0 is the BOS: the shares agree
    a = r["activations"]["all"]
    if a["n_outliers"]:
        assert a["outlier_share_bos"] == pytest.approx(a["outlier_share_pos0"])


def test_measured_checkpoint_is_skipped_unless_forced(checkpoints):
    ckpt = checkpoints["softmax"]
    first = measure(ckpt, SMALL, verbose=False)
    mtime = results_path(ckpt).stat().st_mtime_ns
    assert measure(ckpt, SMALL, verbose=False) == first
    assert results_path(ckpt).stat().st_mtime_ns == mtime
    again = measure(ckpt, SMALL, force=True, verbose=False)
    assert results_path(ckpt).stat().st_mtime_ns != mtime
    assert again["losses"] == first["losses"]                  # deterministic evaluation set
    assert again["quant"][0]["gap"] == first["quant"][0]["gap"]


def test_earlier_checkpoints_get_only_the_dose_bit_widths(tmp_path, tiny_corpus, tiny_data):
    cfg = tiny_train_config(tmp_path, tiny_corpus, tiny_data.parent, max_steps=10, bos=True,
                            checkpoint_fractions=[0.5, 1.0])
    train(cfg)
    mc = {**SMALL, "bit_widths": [[8, 8], [4, 4], [16, 6]], "dose_bit_widths": [[16, 6]]}
    run = tmp_path / "run"
    half = measure(run / "ckpt_000005.pt", mc, verbose=False)
    last = measure(run / "ckpt_000010.pt", mc, verbose=False)
    assert [q["config"] for q in half["quant"]] == ["W16A6"]
    assert half["windowed"] is None
    assert [q["config"] for q in last["quant"]] == ["W8A8", "W4A4", "W16A6", "legacy_W8A8"]
    assert last["windowed"] is not None
    # the same setting on the same checkpoint gives the same gap either way
    again = measure(run / "ckpt_000005.pt", {**mc, "dose_bit_widths": [[16, 6], [8, 8]]},
                    verbose=False)
    assert again["quant"][0] == half["quant"][0]


def test_bad_measure_options():
    with pytest.raises(ConfigError, match="unknown measurement key.*'act_seq'"):
        MeasureConfig.from_dict({"act_seq": 3})
    with pytest.raises(ConfigError, match="bit_widths"):
        MeasureConfig.from_dict({"bit_widths": [[8]]})
    with pytest.raises(ConfigError, match="dose_bit_widths must be a list of \\[wbits, abits\\]"):
        MeasureConfig.from_dict({"dose_bit_widths": [[8, 1]]})
    with pytest.raises(ConfigError, match="tensor, channel"):
        MeasureConfig.from_dict({"weight_granularity": "row"})
    with pytest.raises(ConfigError, match="'opt' is not one of fp32_head, linear_inputs"):
        MeasureConfig.from_dict({"setup": "opt"})
    with pytest.raises(ConfigError, match="compare_legacy must be true or false"):
        MeasureConfig.from_dict({"compare_legacy": "yes"})


def test_measure_groups_matches_the_sweep_and_is_skipped_unless_forced(checkpoints):
    from offbyone.measure import groups_path, measure_groups
    ckpt = checkpoints["sink"]
    sweep_gap = {q["config"]: q["gap"] for q in measure(ckpt, SMALL, verbose=False)["quant"]}
    r = measure_groups(ckpt, SMALL, settings=((8, 8),), verbose=False)
    assert json.loads(groups_path(ckpt).read_text()) == r
    whole = [x["gap"] for x in r["rows"] if x["mode"] == "all"]
    # the same windows and calibration as measure: every group on is the sweep's own W8A8 gap
    assert whole == pytest.approx([sweep_gap["W8A8"]], abs=1e-6)
    modes = {x["mode"] for x in r["rows"]}
    assert modes == {"only", "all but", "all", "none"}
    mtime = groups_path(ckpt).stat().st_mtime_ns
    measure_groups(ckpt, SMALL, settings=((8, 8),), verbose=False)
    assert groups_path(ckpt).stat().st_mtime_ns == mtime
    measure_groups(ckpt, SMALL, settings=((8, 8),), force=True, verbose=False)
    assert groups_path(ckpt).stat().st_mtime_ns != mtime


def test_groups_of_a_profile_need_its_checkpoints(tmp_path):
    from offbyone.measure import main, profile_final_checkpoints
    with pytest.raises(ConfigError, match="is missing: train the profile first"):
        profile_final_checkpoints("smoke", runs_root=str(tmp_path))
    with pytest.raises(SystemExit, match="--profile goes with --groups"):
        main(["--profile", "smoke"])


def test_groups_on_fewer_windows_are_the_sweep_on_those_windows(checkpoints):
    """groups_seqs: the attribution on the first n loss windows, calibrated as measure does."""
    from offbyone.checkpoint import load_model
    from offbyone.measure import _calibration, _data_for, _windows, measure_groups
    from offbyone.quant import sweep
    ckpt = checkpoints["softmax"]
    mc = MeasureConfig.from_dict({**SMALL, "groups_seqs": 3})
    r = measure_groups(ckpt, mc, settings=((8, 8),), force=True, verbose=False)
    model, state = load_model(ckpt)
    data, T = _data_for(state), model.config.block_size
    x, y = _windows(data, "val", mc.loss_seqs, T, True, mc.seed, "cpu")
    calib = _calibration(data, mc, T, True, "cpu")
    (ref,) = sweep(model, calib, x[:3], y[:3], [(8, 8)], setup=mc.setup,
                   weight_granularity=mc.weight_granularity, weight_method=mc.weight_method,
                   act_method=mc.act_method)
    (whole,) = [row["gap"] for row in r["rows"] if row["mode"] == "all"]
    assert whole == pytest.approx(ref["gap"], abs=1e-6)
    full = measure_groups(ckpt, SMALL, settings=((8, 8),), force=True, verbose=False)
    assert [row["gap"] for row in full["rows"] if row["mode"] == "all"] != [whole]
    with pytest.raises(ConfigError, match="groups_seqs must be a non-negative integer"):
        MeasureConfig.from_dict({"groups_seqs": -1})


def test_measuring_a_checkpoint_as_another_variant_is_refused(checkpoints):
    from offbyone.checkpoint import CheckpointError
    from offbyone.measure import measure_groups
    with pytest.raises(CheckpointError, match="is a sink model; it cannot be loaded as softmax"):
        measure(checkpoints["sink"], SMALL, force=True, verbose=False, attention="softmax")
    with pytest.raises(CheckpointError, match="is a softmax model; it cannot be loaded as sink"):
        measure_groups(checkpoints["softmax"], SMALL, force=True, verbose=False, attention="sink")
