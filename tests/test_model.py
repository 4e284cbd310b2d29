import pytest
import torch

from offbyone.attention import VARIANTS
from offbyone.config import gpt_config
from offbyone.model import GPT, GPTConfig


def tiny(variant="softmax1", **kw):
    return GPTConfig(vocab_size=23, block_size=16, n_layer=2, n_head=2, n_embd=32,
                     attention=variant, **kw)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_overfits_one_fixed_batch(variant):
    torch.manual_seed(0)
    model = GPT(tiny(variant))
    x = torch.randint(0, 23, (4, 16), generator=torch.Generator().manual_seed(1))
    y = torch.roll(x, -1, dims=1)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    _, first = model(x, y)
    for _ in range(150):
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first.item() > 2.9                # about ln(23) at initialisation
    assert loss.item() < 0.3 * first.item()  # memorised
    if variant == "sink":                    # the learned sink logit trained too
        assert any(b.attn.sink.detach().abs().max() > 0 for b in model.blocks)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_fast_and_reference_models_agree(variant):
    torch.manual_seed(0)
    model = GPT(tiny(variant)).double()
    if variant == "sink":
        for b in model.blocks:
            b.attn.sink.data.normal_()
    x = torch.randint(0, 23, (3, 16))
    fast, _ = model(x)
    model.set_attention_impl("reference")
    ref, _ = model(x)
    torch.testing.assert_close(fast, ref, rtol=1e-10, atol=1e-10)


def test_hook_points_see_what_they_name():
    torch.manual_seed(0)
    model = GPT(tiny("softmax1", attention_impl="reference")).eval()
    seen = {}
    names = ["blocks.0.attn.hook_probs", "blocks.0.attn.hook_out", "blocks.0.attn.hook_proj",
             "blocks.1.mlp.hook_hidden", "blocks.1.mlp.hook_out", "blocks.1.hook_resid"]
    mods = dict(model.named_modules())
    for n in names:
        mods[n].register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, o.detach()))
    x = torch.randint(0, 23, (2, 16))
    model(x)
    assert seen["blocks.0.attn.hook_probs"].shape == (2, 2, 16, 16)
    assert (seen["blocks.0.attn.hook_probs"].sum(-1) < 1).all()   # softmax1 abstains a little
    assert seen["blocks.0.attn.hook_out"].shape == (2, 16, 32)
    assert seen["blocks.1.mlp.hook_hidden"].shape == (2, 16, 128)
    # the residual after block 1 is what ln_f normalises
    ln_in = {}
    model.ln_f.register_forward_hook(lambda m, i, o: ln_in.__setitem__("x", i[0]))
    model(x)
    torch.testing.assert_close(ln_in["x"], seen["blocks.1.hook_resid"])


def test_tied_embeddings_and_config_errors():
    model = GPT(tiny())
    assert model.lm_head.weight is model.wte.weight
    with pytest.raises(ValueError, match="softmax, softmax1, sink"):
        tiny("quiet")
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(n_embd=30, n_head=4)
    with pytest.raises(ValueError, match="unknown model configuration key.*valid keys"):
        gpt_config({"n_layers": 2})
    with pytest.raises(ValueError, match="exceeds block_size"):
        model(torch.zeros(1, 17, dtype=torch.long))
