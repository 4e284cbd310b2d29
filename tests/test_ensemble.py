"""Seeds trained as one vmapped ensemble (offbyone.ensemble) against the same seeds trained one
by one: the same batches, initialisation and updates, so the same weights to float tolerance;
records that train() resumes and measure() reads."""
import copy
import json

import pytest
import torch

from offbyone.checkpoint import load_checkpoint
from offbyone.config import ConfigError
from offbyone.ensemble import check_members, ensemble_groups, train_ensemble
from offbyone.train import list_checkpoints, train

from conftest import tiny_train_config

GUO = dict(bias=False, mlp_act="relu", tie_embeddings=False, init="torch")


def _cfgs(tmp_path, tiny_corpus, tiny_data, tag, **kw):
    out = []
    for seed in (3, 7):
        c = tiny_train_config(tmp_path, tiny_corpus, tiny_data.parent, seed=seed, dropout=0.0,
                              attention_impl="reference", **kw)
        c.out_dir = str(tmp_path / f"{tag}-s{seed}")
        out.append(c)
    return out


def _weights(out_dir):
    return load_checkpoint(list_checkpoints(out_dir)[-1])["model"]


@pytest.mark.parametrize("variant,kw", [("softmax1", {}), ("sink", GUO),
                                        ("softmax", dict(GUO, optimizer="sgd", lr=0.03,
                                                         min_lr=0.003, grad_clip=0.0))])
def test_an_ensemble_trains_each_seed_as_its_own_run_would(tmp_path, tiny_corpus, tiny_data,
                                                           variant, kw):
    sep = _cfgs(tmp_path, tiny_corpus, tiny_data, "sep", attention=variant, **kw)
    ens = _cfgs(tmp_path, tiny_corpus, tiny_data, "ens", attention=variant, **kw)
    for c in sep:
        train(c)
    summaries = train_ensemble(ens)
    assert [s["seed"] for s in summaries] == [3, 7] and all(s["ensemble_of"] == 2 for s in summaries)
    for a, b in zip(sep, ens):
        wa, wb = _weights(a.out_dir), _weights(b.out_dir)
        assert wa.keys() == wb.keys()
        for k in wa:
            torch.testing.assert_close(wb[k], wa[k], rtol=2e-4, atol=2e-5, msg=k)
        la = [json.loads(l) for l in open(f"{a.out_dir}/log.jsonl")]
        lb = [json.loads(l) for l in open(f"{b.out_dir}/log.jsonl")]
        va = [r["val_loss"] for r in la if "val_loss" in r and "event" not in r]
        vb = [r["val_loss"] for r in lb if "val_loss" in r and "event" not in r]
        assert va == pytest.approx(vb, rel=1e-4) and len(va) == 3
        assert [r.get("bos_ratio") is not None for r in lb if "val_loss" in r and "event" not in r] \
            == [a.bos] * 3
    # the seeds really differ (not one model copied)
    w3, w7 = _weights(ens[0].out_dir), _weights(ens[1].out_dir)
    assert not torch.equal(w3["wte.weight"], w7["wte.weight"])


def test_an_interrupted_ensemble_resumes_and_train_resumes_its_members(tmp_path, tiny_corpus,
                                                                         tiny_data):
    whole = _cfgs(tmp_path, tiny_corpus, tiny_data, "whole")
    cut = _cfgs(tmp_path, tiny_corpus, tiny_data, "cut")
    train_ensemble(whole)

    class Stop(Exception):
        pass

    def stop_at_7(step):
        if step == 7:
            raise Stop
    with pytest.raises(Stop):
        train_ensemble(cut, on_step=stop_at_7)        # checkpoints at step 6 (fraction 0.5)
    assert [load_checkpoint(list_checkpoints(c.out_dir)[-1])["step"] for c in cut] == [6, 6]
    one = copy.deepcopy(cut[1])
    cut_rest = [cut[0]]
    train_ensemble(cut_rest)                          # a one-member ensemble resumes seed 3
    train(one)                                        # train() resumes seed 7 from the ensemble's checkpoint
    for a, b in zip(whole, cut):
        wa, wb = _weights(a.out_dir), _weights(b.out_dir)
        for k in wa:
            torch.testing.assert_close(wb[k], wa[k], rtol=2e-4, atol=2e-5, msg=k)
    assert train_ensemble(whole)[0]["seed"] == 3      # finished: nothing to do


def test_an_ensemble_refuses_what_it_cannot_match(tmp_path, tiny_corpus, tiny_data):
    a, b = _cfgs(tmp_path, tiny_corpus, tiny_data, "x")
    b2 = copy.deepcopy(b)
    b2.lr = 1e-3
    with pytest.raises(ConfigError, match="differ only in seed and out_dir; .* differs in lr"):
        check_members([a, b2])
    d = [copy.deepcopy(a), copy.deepcopy(b)]
    for c in d:
        c.dropout = 0.1
    with pytest.raises(ConfigError, match="cannot train with dropout"):
        check_members(d)
    with pytest.raises(ConfigError, match="distinct seeds"):
        check_members([a, copy.deepcopy(a)])
    own = [copy.deepcopy(a), copy.deepcopy(b)]
    for c in own:
        c.sink_lr = 1e-2
    with pytest.raises(ConfigError, match="sink learning rate .* one by one"):
        check_members(own)
    runs = [("p", "softmax", s) for s in range(5)] + [("p", "sink", 0)]
    assert ensemble_groups(runs, 2) == [[("p", "softmax", 0), ("p", "softmax", 1)],
                                        [("p", "softmax", 2), ("p", "softmax", 3)],
                                        [("p", "softmax", 4)], [("p", "sink", 0)]]
