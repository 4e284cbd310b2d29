"""torch.compile traces a GPT through the sink fast path (a torch.library custom op) in one graph,
and the compiled model's loss and gradients match eager mode."""
import pytest
import torch

from offbyone.model import GPT, GPTConfig


@pytest.mark.parametrize("variant", ["softmax1", "sink"])
def test_compiled_gpt_has_no_graph_break_and_matches_eager(variant):
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, block_size=32, n_layer=2, n_head=2, n_embd=32,
                          attention=variant, sink_init=0.5))
    g = torch.Generator().manual_seed(1)
    x, y = (torch.randint(0, 50, (4, 32), generator=g) for _ in range(2))

    explained = torch._dynamo.explain(model)(x, y)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1

    params = list(model.parameters())
    _, loss = model(x, y)
    grads = torch.autograd.grad(loss, params)
    _, loss_c = torch.compile(model)(x, y)
    grads_c = torch.autograd.grad(loss_c, params)
    torch.testing.assert_close(loss_c, loss, rtol=1e-5, atol=1e-6)
    for name, gc, ge in zip([n for n, _ in model.named_parameters()], grads_c, grads):
        torch.testing.assert_close(gc, ge, rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")
    if variant == "sink":  # the sink logit's gradient goes through the op's autograd formula
        assert any(n.endswith("attn.sink") for n, _ in model.named_parameters())
    torch._dynamo.reset()
