import pytest
import torch

from offbyone.metrics import (_ActivationStats, activation_statistics, attention_statistics,
                              kurtosis, summarize_activations, token_classes,
                              uniform_first_position_mass)
from offbyone.model import GPT, GPTConfig

ITOS = list("abcdefg ,.\n") + ["<bos>"]      # ids 7..10 are delimiters, 11 is BOS
CLASSES = token_classes(ITOS, bos_id=11)


def tiny(variant="softmax", **kw):
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=len(ITOS), block_size=16, n_layer=2, n_head=2, n_embd=32,
                         attention=variant, **kw)).eval().double()


def test_kurtosis_known_values():
    g = torch.Generator().manual_seed(0)
    assert abs(kurtosis(torch.randn(1_000_000, generator=g)).item() - 3.0) < 0.03
    # two spikes +-a among zeros: mean 0, var 2a^2/n, mu4 2a^4/n, so kurtosis n/2
    x = torch.zeros(1000)
    x[3], x[500] = 7.0, -7.0
    assert kurtosis(x).item() == pytest.approx(500.0, rel=1e-9)
    # a planted outlier raises a Gaussian's kurtosis by what its moments say
    y = torch.randn(10_000, generator=g, dtype=torch.float64)
    y[123] = 40.0
    c = y - y.mean()
    expected = (c ** 4).mean() / (c ** 2).mean() ** 2
    assert kurtosis(y).item() == pytest.approx(expected.item(), rel=1e-9)
    assert kurtosis(y).item() > 150          # ~ (3 + 40^4 / n) / (1 + 40^2 / n)^2 = 192


def test_inf_norm_and_outlier_positions_of_a_known_tensor():
    # 1024 values per sequence, so one value can lie 6 standard deviations out
    x = torch.randn(2, 64, 16, generator=torch.Generator().manual_seed(1)) * 0.1
    x[0, 3, 2] = 9.0        # sequence 0: outlier at position 3, dim 2
    x[1, 0, 1] = -5.0       # sequence 1: outlier at position 0, dim 1
    delim = torch.zeros(2, 64, dtype=torch.bool)
    delim[0, 3] = True
    st = _ActivationStats()
    st.update(x, {"delimiter": delim, "bos": torch.zeros(2, 64, dtype=torch.bool)})
    r = st.result()
    assert r["inf_norm"] == pytest.approx((9.0 + 5.0) / 2)
    assert r["max_abs"] == pytest.approx(9.0)
    assert r["n_outliers"] == 2
    assert r["outlier_share_delimiter"] == 0.5 and r["outlier_share_pos0"] == 0.5
    assert sorted(d for d, _ in r["outlier_top_dims"]) == [1, 2]


def test_planted_outlier_channel_is_found_where_planted():
    model = tiny()
    space = ITOS.index(" ")
    with torch.no_grad():
        model.wte.weight[space, 7] = 30.0           # a huge value in dim 7 on every space
    seqs = torch.randint(0, 11, (8, 16), generator=torch.Generator().manual_seed(2))
    seqs[:, 5] = space
    stats = activation_statistics(model, seqs, CLASSES, batch_size=4)
    for name in ("embed", "blocks.0.resid", "blocks.1.resid"):
        m = stats["modules"][name]
        assert m["outlier_top_dims"][0][0] == 7, name
        assert m["outlier_share_delimiter"] == 1.0, name
        assert m["kurtosis"] > 20 and m["inf_norm"] > 25
    summary = summarize_activations(stats["modules"])
    assert summary["by_kind"]["resid"]["outlier_share_delimiter"] == 1.0
    assert stats["base_rates"]["delimiter"] == pytest.approx(
        CLASSES["delimiter"][seqs].float().mean().item())
    clean = summarize_activations(activation_statistics(tiny(), seqs, CLASSES)["modules"])
    assert summary["all"]["max_inf_norm"] > 5 * clean["all"]["max_inf_norm"]


class _Fixed(torch.nn.Module):
    def __init__(self, probs):
        super().__init__()
        self.probs = probs

    def forward(self, p):
        return self.probs.expand_as(p)


def test_attention_statistics_of_a_hand_built_pattern():
    model = tiny()
    T = 16
    p = torch.zeros(1, 2, T, T, dtype=torch.float64)
    p[0, 0, :, 0] = 0.9                               # head 0: 0.9 on position 0 ...
    p[0, 0, torch.arange(T), torch.arange(T)] += 0.1  # ... and 0.1 on itself
    p[0, 1] = torch.eye(T) * 0.5                      # head 1: 0.5 on itself, abstains 0.5
    for b in model.blocks:
        b.attn.hook_probs = _Fixed(p)
    seqs = torch.full((3, T), ITOS.index("a"))
    seqs[:, 4] = ITOS.index(",")                      # one delimiter key, at position 4
    st = attention_statistics(model, seqs, CLASSES)
    first = torch.tensor(st["first_position"])
    # queries t >= 1 only (query 0 can see nothing but position 0) ...
    assert first[:, 0].tolist() == pytest.approx([0.9] * 2)
    assert first[:, 1].tolist() == pytest.approx([0.0] * 2, abs=1e-12)
    # ... and all queries, for the sink rate (Gu et al.)
    first_all = torch.tensor(st["first_position_all_queries"])
    assert first_all[:, 0].tolist() == pytest.approx([0.9 + 0.1 / T] * 2)
    assert first_all[:, 1].tolist() == pytest.approx([0.5 / T] * 2)
    assert torch.tensor(st["abstention"])[:, 1].tolist() == pytest.approx([0.5] * 2)
    assert torch.tensor(st["abstention"])[:, 0].tolist() == pytest.approx([0.0] * 2, abs=1e-12)
    # delimiter key at position 4: head 0 gives it 0.1 from query 4 only; head 1 0.5 from query 4
    assert torch.tensor(st["delimiter"])[0].tolist() == pytest.approx([0.1 / T, 0.5 / T])
    assert st["sink_rate"] == 0.5                      # head 0 of both layers exceeds 0.3


@pytest.mark.parametrize("T", [16, 64])
def test_uniform_causal_attention_gives_harmonic_baseline(T):
    model = tiny(variant="softmax")
    model.config.block_size = T
    model.wpe = torch.nn.Embedding(T, 32).double()
    with torch.no_grad():                     # zero query/key weights: all scores 0, uniform
        for b in model.blocks:
            b.attn.c_attn.weight[:64].zero_()
            b.attn.c_attn.bias[:64].zero_()
    seqs = torch.randint(0, 11, (2, T), generator=torch.Generator().manual_seed(3))
    st = attention_statistics(model, seqs, CLASSES)
    H_T = sum(1 / t for t in range(1, T + 1))
    assert uniform_first_position_mass(T) == pytest.approx(H_T / T)
    assert uniform_first_position_mass(T, skip_first=True) == pytest.approx((H_T - 1) / (T - 1))
    assert st["mean_first_position"] == pytest.approx((H_T - 1) / (T - 1), rel=1e-9)
    assert st["uniform_first_position"] == pytest.approx((H_T - 1) / (T - 1))
    assert st["uniform_first_position_all_queries"] == pytest.approx(H_T / T)
    assert torch.tensor(st["first_position_all_queries"]).mean().item() == pytest.approx(H_T / T)
    assert st["mean_abstention"] == pytest.approx(0.0, abs=1e-12)
    assert uniform_first_position_mass(64) == pytest.approx(0.074, abs=5e-4)   # REFERENCES.md
    assert uniform_first_position_mass(256) == pytest.approx(0.024, abs=5e-4)


def test_softmax1_abstention_with_zero_scores():
    model = tiny(variant="softmax1")
    with torch.no_grad():
        for b in model.blocks:
            b.attn.c_attn.weight[:64].zero_()
            b.attn.c_attn.bias[:64].zero_()
    T = 16
    seqs = torch.randint(0, 11, (2, T))
    st = attention_statistics(model, seqs, CLASSES)
    # query t sees t + 1 keys with logit 0 and the sink's 0: abstains 1 / (t + 2)
    expected = sum(1 / (t + 2) for t in range(T)) / T
    assert st["mean_abstention"] == pytest.approx(expected, rel=1e-9)


# --- magnitude beside kurtosis: measures that abstention cannot fool ---------------------------
def test_active_kurtosis_is_pearsons_where_every_position_is_active():
    from scipy import stats as sps
    from offbyone.metrics import active_kurtosis
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 16, 8, generator=g, dtype=torch.float64) * torch.linspace(0.5, 2, 8)
    k, share = active_kurtosis(x)
    for b in range(3):
        assert k[b].item() == pytest.approx(sps.kurtosis(x[b].flatten().numpy(), fisher=False))
    assert torch.all(share == 1)


def test_abstaining_positions_raise_kurtosis_but_not_the_active_kurtosis_or_the_magnitude():
    from offbyone.metrics import MAGNITUDE_QUANTILE, active_kurtosis
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 64, 16, generator=g, dtype=torch.float64)
    k_before, _ = active_kurtosis(x)
    sparse = x.clone()
    sparse[:, ::4] = x[:, ::4]          # keep every 4th position, zero the rest (abstention)
    sparse[:, [i for i in range(64) if i % 4]] = 0.0
    flat = sparse.reshape(2, -1)
    plain = ((flat - flat.mean(1, keepdim=True)) ** 4).mean(1) / flat.var(1, unbiased=False) ** 2
    k_after, share = active_kurtosis(sparse)
    assert torch.all(plain > 2.5 * k_before)                    # kurtosis counts the zeros
    assert torch.allclose(share, torch.full((2,), 0.25, dtype=torch.float64))
    # the active kurtosis is that of the kept positions alone
    kept = x[:, ::4].reshape(2, -1)
    ref = ((kept - kept.mean(1, keepdim=True)) ** 4).mean(1) / kept.var(1, unbiased=False) ** 2
    assert torch.allclose(k_after, ref)
    assert MAGNITUDE_QUANTILE == 0.9999


def test_module_statistics_report_the_magnitude_quantile():
    import numpy as np
    from offbyone.metrics import _ActivationStats
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, 32, 16, generator=g)
    st = _ActivationStats()
    st.update(x, {})
    r = st.result()
    ref = np.mean([np.quantile(np.abs(x[b].double().numpy()).ravel(), 0.9999) for b in range(4)])
    assert r["p9999"] == pytest.approx(ref)
    assert r["p9999"] <= r["inf_norm"] and r["active_share"] == pytest.approx(1.0)
