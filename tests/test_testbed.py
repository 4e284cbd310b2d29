"""The Bigram-Backcopy testbed: generator, token classes, per-class losses and attention split."""
import json

import numpy as np
import pytest
import torch

from offbyone import report as R
from offbyone.corpora.testbed import BigramBackcopy, bigram_backcopy_tokens, build_bigram_backcopy
from offbyone.data import prepare
from offbyone.tokens import TokenData
from offbyone.metrics import attention_statistics, loss_by_class, token_classes
from offbyone.model import GPT, GPTConfig

SMALL = BigramBackcopy(vocab=12, triggers=2, train_tokens=20_000, heldout_tokens=4_000, chains=8)


def test_generator_follows_its_rules(tmp_path):
    meta = build_bigram_backcopy(tmp_path / "bb", SMALL)
    data = TokenData(tmp_path / "bb")
    trig = np.array(meta["token_classes"]["trigger"])
    assert len(trig) == SMALL.triggers and meta["bos_id"] == SMALL.vocab == meta["vocab_size"] - 1
    for split in ("train", "val", "test"):
        x = np.asarray(data.splits[split]).astype(np.int64)
        L = -(-len(x) // SMALL.chains)
        is_t = np.isin(x, trig)
        pos = np.arange(len(x))
        # after a trigger at t - 1 (not a chain's first token): x[t] copies x[t - 2]
        after = pos[1:][is_t[:-1] & (pos[:-1] % L != 0) & (pos[1:] % L != 0)]
        assert len(after) > 0.02 * len(x)
        assert (x[after] == x[after - 2]).all()
        assert not (is_t[1:] & is_t[:-1]).any()                     # no two triggers in a row
        assert x.max() < SMALL.vocab                                 # BOS never in the stream
    # the chain is not the copy rule everywhere: ordinary positions follow peaked bigram rows
    x = np.asarray(data.splits["train"]).astype(np.int64)
    ordinary = ~np.isin(x[:-1], trig)
    same = (x[1:][ordinary][:-1] == x[:-1][ordinary][:-1]).mean()
    assert same < 0.5


def test_generator_is_deterministic_and_prepared_once(tmp_path):
    a = build_bigram_backcopy(tmp_path / "a", SMALL)
    b = build_bigram_backcopy(tmp_path / "b", SMALL)
    assert a["splits"] == b["splits"]                                # same hashes
    c = build_bigram_backcopy(tmp_path / "c", BigramBackcopy(**{**SMALL.__dict__, "seed": 1}))
    assert c["splits"]["train"]["sha256"] != a["splits"]["train"]["sha256"]
    d = prepare("bigram_backcopy", tmp_path / "root", verbose=False)
    before = (d / "train.bin").stat().st_mtime_ns
    assert prepare("bigram_backcopy", tmp_path / "root", verbose=False) == d
    assert (d / "train.bin").stat().st_mtime_ns == before              # nothing rewritten
    assert json.loads((d / "meta.json").read_text())["source"]["generator"] == "bigram_backcopy"


def test_chains_start_on_ordinary_tokens():
    rng = np.random.default_rng(0)
    spec = BigramBackcopy(vocab=4, triggers=1, chains=5)
    probs = np.full((4, 4), 0.25)
    probs[2] = 0
    x = bigram_backcopy_tokens(spec, 50, rng, np.cumsum(probs, 1), np.array([2]))
    assert len(x) == 50 and not (x.reshape(5, 10)[:, 0] == 2).any()


def test_token_classes_from_meta_and_clash():
    itos = ["a00", "T01", "a02", "<bos>"]
    c = token_classes(itos, 3, {"trigger": [1]})
    assert c["trigger"].tolist() == [False, True, False, False]
    assert c["bos"].tolist() == [False, False, False, True]
    with pytest.raises(ValueError, match="clashes"):
        token_classes(itos, 3, {"bos": [0]})


def _model(variant="softmax", vocab=4, T=8):
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=vocab, block_size=T, n_layer=1, n_head=2, n_embd=16,
                         attention=variant)).double().eval()


def test_loss_by_class_splits_positions_exactly():
    model = _model()
    x = torch.randint(0, 4, (3, 8), generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 4, (3, 8), generator=torch.Generator().manual_seed(2))
    mask = torch.tensor([False, True, False, False])
    r = loss_by_class(model, x, y, mask, batch_size=2)
    logits, _ = model(x)
    nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none")
    m = (x == 1).flatten()
    assert r["n_in_class"] == int(m.sum()) and r["n_other"] == int((~m).sum())
    assert r["in_class"] == pytest.approx(nll[m].mean().item(), rel=1e-6)   # fp32 logits
    assert r["other"] == pytest.approx(nll[~m].mean().item(), rel=1e-6)


def test_attention_split_by_trigger_queries_weights_by_query_count():
    model = _model()
    x = torch.tensor([[3, 0, 1, 0, 0, 1, 0, 0], [3, 0, 0, 0, 0, 0, 0, 0]])
    classes = token_classes(["a", "T", "b", "<bos>"], 3, {"trigger": [1]})
    st = attention_statistics(model, x, classes)
    probs = {}
    model.set_attention_impl("reference")
    model.blocks[0].attn.hook_probs.register_forward_hook(lambda m, i, o: probs.update(p=o))
    model(x)
    p0 = probs["p"][:, :, 1:, 0]                                      # (B, H, T - 1): t >= 1
    trig = (x[:, 1:] == 1)[:, None, :].expand_as(p0)
    want_t = [(p0[:, h][trig[:, h]]).mean().item() for h in range(2)]
    want_o = [(p0[:, h][~trig[:, h]]).mean().item() for h in range(2)]
    assert st["n_trigger_queries"] == 2
    assert st["first_position_trigger_queries"][0] == pytest.approx(want_t, rel=1e-10)
    assert st["first_position_other_queries"][0] == pytest.approx(want_o, rel=1e-10)


def test_disease_signs_thresholds():
    row = {"variant": "softmax", "seed": 0, "max_kurtosis": 12.0, "max_inf_norm": 30.0,
           "avg_inf_norm": 5.0, "sink_rate": 0.0, "max_head_first_position_T64": 0.2,
           "outlier_share_delimiter": 0.5, "delimiter_base_rate": 0.2, "gap_W8A8": 0.002}
    import pandas as pd
    signs = {d["sign"]: d["present"] for d in R.disease_signs(pd.DataFrame([row]))}
    assert signs == {"kurtosis": True, "massive activations": True, "attention sink": False,
                     "outliers on delimiters": True, "W8A8 gap": False}
    none = {**row, "delimiter_base_rate": 0.0, "outlier_share_delimiter": None}
    d = {d["sign"]: d for d in R.disease_signs(pd.DataFrame([none]))}
    assert not d["outliers on delimiters"]["present"]
    assert d["outliers on delimiters"]["value"] == "no delimiters"


def test_bars_too_short_to_see_are_named_with_their_largest_value():
    import pandas as pd
    from offbyone.report.testbed import tiny_bars
    heads = pd.DataFrame({"variant": ["softmax"] * 2 + ["softmax1"] * 2, "layer": [0, 1, 0, 1],
                          "head": [0, 0, 0, 0], "t": [0.02, 0.05, 0.0006, 0.05]})
    note = tiny_bars(heads, "t", ["softmax", "softmax1"], "on the right")
    assert note == " Bars too short to see on the right: softmax1's layer-0 heads (at most $0.0006$)."
    assert tiny_bars(heads.assign(t=0.05), "t", ["softmax", "softmax1"], "on the right") == ""
