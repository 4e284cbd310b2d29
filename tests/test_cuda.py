"""The sink fast path on the CUDA kernels against the float64 reference, values and gradients:
the memory-efficient kernel in fp32, the flash kernel in bf16 and fp16, head sizes 64 and 128,
T from 1 to 4096. Skipped without a CUDA GPU; `make gpu-check` runs them there."""
import pytest
import torch

from offbyone.attention import fast_attention, fused_kernel_for
from offbyone.gpu_check import CHECK_HEAD_SIZES, CHECK_KERNELS, CHECK_T, kernel_errors

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
@pytest.mark.parametrize("variant", ["softmax1", "sink"])
@pytest.mark.parametrize("T", CHECK_T)
@pytest.mark.parametrize("D", CHECK_HEAD_SIZES)
@pytest.mark.parametrize("kernel,dtype", CHECK_KERNELS, ids=lambda x: str(x).replace("torch.", ""))
def test_sink_fast_path_on_cuda_kernel_against_float64(kernel, dtype, D, T, variant):
    r = kernel_errors(kernel, dtype, D, T, variant)
    assert r["ok"], r


@cuda
@pytest.mark.parametrize("dtype,expected", [(torch.bfloat16, "cuda_flash"),
                                            (torch.float16, "cuda_flash"),
                                            (torch.float32, "cuda_efficient")])
def test_default_kernel_choice_on_cuda(dtype, expected):
    q = torch.randn(2, 4, 128, 64, device="cuda", dtype=dtype)
    assert fused_kernel_for(q, q, q) == expected
    s = torch.zeros(4, device="cuda")
    out = fast_attention(q, q, q, "sink", s.requires_grad_())
    assert out.shape == q.shape and torch.isfinite(out).all()


@cuda
def test_quantization_sweep_runs_on_cuda():
    """The quantized copy's range buffers live on the model's device (they were made on the
    CPU once, and calibration on a GPU failed)."""
    from offbyone.model import GPT, GPTConfig
    from offbyone.quant import sweep
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, block_size=32, n_layer=2, n_head=2, n_embd=32,
                          attention="softmax1")).cuda().eval()
    x = torch.randint(0, 50, (4, 32), device="cuda")
    rows = sweep(model, [x], x, x, [(8, 8), (4, 4)])
    assert len(rows) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
