"""Sliding-window evaluation (StreamingLLM's test as an evaluation-time mask)."""
import math

import pytest
import torch

from offbyone.attention import VARIANTS, attention_probs, window_mask
from offbyone.measure import MeasureConfig
from offbyone.config import ConfigError
from offbyone.metrics import windowed_losses
from offbyone.model import GPT, GPTConfig


def test_window_mask_by_hand():
    m = window_mask(6, 6, window=2, keep=1)
    for t in range(6):
        for j in range(6):
            assert m[t, j] == (j <= t and (t - j < 2 or j < 1))
    assert torch.equal(window_mask(6, 6), torch.ones(6, 6, dtype=torch.bool).tril())
    assert torch.equal(window_mask(6, 6, window=6), window_mask(6, 6))
    with pytest.raises(ValueError, match="window must be >= 1"):
        window_mask(4, 4, window=0)


@pytest.mark.parametrize("variant", ["softmax", "softmax1", "sink"])
def test_windowed_probabilities_match_a_loop_in_float64(variant):
    g = torch.Generator().manual_seed(0)
    q, k = (torch.randn(1, 2, 7, 4, generator=g, dtype=torch.float64) * 2 for _ in range(2))
    sink = torch.tensor([0.3, -1.0], dtype=torch.float64) if variant == "sink" else None
    p = attention_probs(q, k, variant, sink, window=3, keep=2)
    s0 = {"softmax": None, "softmax1": torch.zeros(2, dtype=torch.float64), "sink": sink}[variant]
    for h in range(2):
        for t in range(7):
            seen = [j for j in range(t + 1) if t - j < 3 or j < 2]
            logits = torch.stack([q[0, h, t] @ k[0, h, j] / 2.0 for j in seen])
            z = logits.exp().sum() + (0.0 if s0 is None else math.exp(s0[h]))
            want = torch.zeros(7, dtype=torch.float64)
            want[seen] = logits.exp() / z
            assert torch.allclose(p[0, h, t], want, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_evicted_tokens_have_no_influence_and_kept_ones_do(variant):
    torch.manual_seed(0)
    T, W, k = 12, 3, 2
    # clip_alpha 0.1: clipped softmax's gamma = -alpha / T would zero every weight at T = 12
    model = GPT(GPTConfig(vocab_size=10, block_size=T, n_layer=2, n_head=2, n_embd=16,
                          attention=variant, clip_alpha=0.1)).double().eval()
    x = torch.randint(0, 10, (1, T), generator=torch.Generator().manual_seed(1))
    model.set_attention_window(W, k)
    # with 2 layers the receptive field of position t is t-2(W-1) .. t plus the kept positions
    t = T - 1
    far = t - 2 * (W - 1) - 1                         # a position outside it, not kept
    assert far >= k
    y = x.clone()
    y[0, far] = (y[0, far] + 1) % 10
    with torch.no_grad():
        a, b = model(x)[0][0, t], model(y)[0][0, t]
        assert torch.allclose(a, b, atol=1e-12)
        z = x.clone()
        z[0, 0] = (z[0, 0] + 1) % 10                     # a kept position does reach t
        assert not torch.allclose(a, model(z)[0][0, t])
        model.set_attention_window(None)
        assert not torch.allclose(model(x)[0][0, t], model(y)[0][0, t])   # full attention sees it
        full = model(x)[0]
        model.set_attention_window(T)                                     # a window of T is full
        assert torch.allclose(model(x)[0], full, atol=1e-12)
    with pytest.raises(ValueError, match="window must be a positive integer"):
        model.set_attention_window(0)
    with pytest.raises(ValueError, match="keep must be a non-negative integer"):
        model.set_attention_window(4, -1)


def test_windowed_losses_grid_and_restores_full_attention():
    torch.manual_seed(0)
    T = 16
    model = GPT(GPTConfig(vocab_size=10, block_size=T, n_layer=1, n_head=2, n_embd=16,
                          attention="softmax1")).double().eval()
    x = torch.randint(0, 10, (4, T), generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 10, (4, T), generator=torch.Generator().manual_seed(2))
    before = model(x)[0]
    r = windowed_losses(model, x, y, windows=(4, 8, 14), keeps=(0, 2), batch_size=3)
    assert {(c["window"], c["keep"]) for c in r["grid"]} == {(4, 0), (4, 2), (8, 0), (8, 2)}
    for c in r["grid"]:                                # 14 + 2 >= T: no position left, skipped
        assert c["start"] == c["window"] + 2
        model.set_attention_window(c["window"], c["keep"])
        logits = model(x)[0][:, c["start"]:]
        want = torch.nn.functional.cross_entropy(logits.reshape(-1, 10), y[:, c["start"]:].reshape(-1))
        assert c["loss"] == pytest.approx(want.item(), rel=1e-6)   # logits in fp32
        model.set_attention_window(None)
        full = torch.nn.functional.cross_entropy(model(x)[0][:, c["start"]:].reshape(-1, 10),
                                                 y[:, c["start"]:].reshape(-1))
        assert c["full_loss"] == pytest.approx(full.item(), rel=1e-6)
    assert torch.equal(model(x)[0], before)             # the model is left at full attention
    assert model.blocks[0].attn.window is None


def test_measure_config_checks_windows():
    assert MeasureConfig(windows=[8, 16], keeps=[0, 4]).windows == (8, 16)
    with pytest.raises(ConfigError, match="windows must be a list of integers >= 1"):
        MeasureConfig(windows=[0])
    with pytest.raises(ConfigError, match="keeps must be a list of integers >= 0"):
        MeasureConfig(keeps=["a"])
