"""A nanoGPT-style decoder: pre-LayerNorm blocks, GELU MLP, learned positions, tied embeddings.

Guo et al.'s (2024) Bigram-Backcopy model differs in ways that decide whether the BOS residual
peak grows (issue 24's pilots); each is an option here, so both models are one class:

    bias=False               no biases in linears and LayerNorms
    mlp_act="relu"           ReLU MLP instead of GELU
    tie_embeddings=False     a separate output matrix instead of the token embedding's transpose
    init="torch"             PyTorch's default initialisation (embeddings N(0, 1), linears
                             U(+-1/sqrt(fan_in))) instead of GPT-2's N(0, 0.02) with scaled
                             residual projections: residual norms then start near sqrt(2 C)
                             (about 23 at width 256) instead of below 1

The attention variant is a config field (see `offbyone.attention.VARIANTS`). Named `nn.Identity`
hook points let measurements attach forward hooks without touching the math:

    hook_embed                    token plus position embedding (B, T, C)
    blocks[i].attn.hook_q/_k/_v   the query, key and value projections (B, T, C)
    blocks[i].attn.hook_scores    scaled QK^T scores before the mask (B, H, T, T), reference path
    blocks[i].attn.hook_probs     attention probabilities (B, H, T, T), reference path only
    blocks[i].attn.hook_context   P @ V before any gate, per head (B, H, T, C / H)
    blocks[i].attn.hook_gate      gate values of gated variants: (B, H, T) per head, or (B, T, C)
    blocks[i].attn.hook_out       attention output before its projection, heads merged (B, T, C)
    blocks[i].attn.hook_proj      attention output after its projection (B, T, C)
    blocks[i].mlp.hook_hidden     MLP hidden activation after GELU (B, T, 4C)
    blocks[i].hook_mid            residual stream after attention, before the MLP (B, T, C)
    blocks[i].mlp.hook_out        MLP output (B, T, C)
    blocks[i].hook_resid          residual stream after the block (B, T, C)
    blocks[i].ln_1 / ln_2, ln_f   LayerNorm modules (hook them directly for their outputs)
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import GATES, IMPLEMENTATIONS, VARIANTS, attention, attention_probs, get_variant

OUTGATE_MODES = ("elementwise", "headwise")
MLP_ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu}
INITS = ("gpt2", "torch")
OPTIMIZERS = ("adamw", "sgd")


@dataclass
class GPTConfig:
    vocab_size: int = 66
    block_size: int = 128
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = True
    attention: str = "softmax"       # a name in offbyone.attention.VARIANTS
    attention_impl: str = "fast"     # "fast" (fused kernels) or "reference" (materialised)
    sink_init: float = 0.0           # initial logit of the learned sink (variant "sink")
    clip_alpha: float = 4.0          # clipped softmax: gamma = -clip_alpha / T
    gate: str = "none"               # a gate on top of any normaliser: none, gated, outgate
    gate_init: float = 0.25          # gated: the initial gate value pi_init (bias = logit)
    outgate_mode: str = "elementwise"  # outgate: one gate per channel, or per head
    mlp_act: str = "gelu"            # the MLP's activation: gelu (nanoGPT) or relu (Guo et al.)
    tie_embeddings: bool = True      # the LM head shares the token embedding (nanoGPT)
    init: str = "gpt2"               # gpt2: N(0, 0.02), scaled projections; torch: PyTorch's defaults

    def __post_init__(self):
        get_variant(self.attention)
        self.gate_kind()
        if self.outgate_mode not in OUTGATE_MODES:
            raise ValueError(f"outgate_mode {self.outgate_mode!r} is not one of "
                             f"{', '.join(OUTGATE_MODES)}")
        if not 0.0 < self.gate_init < 1.0:
            raise ValueError(f"gate_init must be in (0, 1), got {self.gate_init}")
        if self.clip_alpha < 0:
            raise ValueError(f"clip_alpha must be >= 0, got {self.clip_alpha}")
        if self.mlp_act not in MLP_ACTIVATIONS:
            raise ValueError(f"mlp_act {self.mlp_act!r} is not one of {', '.join(MLP_ACTIVATIONS)}")
        if self.init not in INITS:
            raise ValueError(f"init {self.init!r} is not one of {', '.join(INITS)}")
        if self.attention_impl not in IMPLEMENTATIONS:
            raise ValueError(f"attention_impl {self.attention_impl!r} is not one of "
                             f"{', '.join(IMPLEMENTATIONS)}")
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) < 1:
                raise ValueError(f"GPTConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    def gate_kind(self) -> str:
        """The gate in effect: the variant's own (gated, outgate) or the `gate` option."""
        if self.gate not in GATES:
            raise ValueError(f"gate {self.gate!r} is not one of {', '.join(GATES)}")
        own = get_variant(self.attention).gate
        if own != "none" and self.gate != "none":
            plain = [n for n, v in VARIANTS.items() if v.gate == "none"]
            raise ValueError(f"attention {self.attention!r} already has its gate; gate must be "
                             f"'none', or combine a gate with one of {', '.join(plain)}")
        return own if own != "none" else self.gate

    def to_dict(self) -> dict:
        return asdict(self)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.variant = get_variant(config.attention).name
        self.impl = config.attention_impl  # may be switched at measurement time
        self.window, self.keep = None, 0   # an evaluation-time sliding window (set_attention_window)
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        if get_variant(config.attention).learned_sink:
            self.sink = nn.Parameter(torch.full((config.n_head,), float(config.sink_init)))
        else:
            self.sink = None
        self.clip_alpha = config.clip_alpha
        self.gate = config.gate_kind()
        self.outgate_mode = config.outgate_mode
        hs = config.n_embd // config.n_head
        if self.gate == "gated":      # per head: Linear(d_head -> 1) on the head's input slice
            self.gate_weight = nn.Parameter(torch.randn(config.n_head, hs) * 0.02)
            pi = config.gate_init
            self.gate_bias = nn.Parameter(torch.full((config.n_head,), math.log(pi / (1 - pi))))
        elif self.gate == "outgate":  # G1: sigmoid(X W) from the block's normalised input
            out = config.n_embd if config.outgate_mode == "elementwise" else config.n_head
            self.gate_proj = nn.Linear(config.n_embd, out, bias=True)
        self.hook_q, self.hook_k, self.hook_v = nn.Identity(), nn.Identity(), nn.Identity()
        self.hook_scores = nn.Identity()
        self.hook_context = nn.Identity()
        self.hook_gate = nn.Identity()
        self.hook_probs = nn.Identity()
        self.hook_out = nn.Identity()
        self.hook_proj = nn.Identity()

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)
        hs = C // self.n_head
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, hs).transpose(1, 2)
        v = v.view(B, T, self.n_head, hs).transpose(1, 2)
        if self.impl == "reference" or self.window is not None:
            probs = self.hook_probs(attention_probs(q, k, self.variant, self.sink,
                                                    clip_alpha=self.clip_alpha, window=self.window,
                                                    keep=self.keep, score_hook=self.hook_scores))
            y = probs @ v  # (B, nh, T, hs) from the hooked probabilities (quantized ones, say)
        else:
            y = attention(q, k, v, self.variant, self.sink, causal=True, impl=self.impl,
                          clip_alpha=self.clip_alpha)
        y = self.hook_context(y)
        if self.gate == "gated":
            xh = x.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
            g = torch.sigmoid(torch.einsum("bhtd,hd->bht", xh, self.gate_weight)
                              + self.gate_bias.view(1, -1, 1))
            y = y * self.hook_gate(g).unsqueeze(-1)  # (B, nh, T, hs)
        elif self.gate == "outgate" and self.outgate_mode == "headwise":
            g = torch.sigmoid(self.gate_proj(x)).transpose(1, 2)  # (B, nh, T)
            y = y * self.hook_gate(g).unsqueeze(-1)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C), heads merged
        if self.gate == "outgate" and self.outgate_mode == "elementwise":
            y = y * self.hook_gate(torch.sigmoid(self.gate_proj(x)))  # (B, T, C), elementwise
        y = self.hook_out(y)
        y = self.hook_proj(self.c_proj(y))
        return self.resid_dropout(y)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.act = MLP_ACTIVATIONS[config.mlp_act]
        self.dropout = nn.Dropout(config.dropout)
        self.hook_hidden = nn.Identity()
        self.hook_out = nn.Identity()

    def forward(self, x):
        h = self.hook_hidden(self.act(self.c_fc(x)))  # (B, T, 4C)
        return self.dropout(self.hook_out(self.c_proj(h)))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)
        self.hook_mid = nn.Identity()
        self.hook_resid = nn.Identity()

    def forward(self, x):
        x = self.hook_mid(x + self.attn(self.ln_1(x)))
        x = x + self.mlp(self.ln_2(x))
        return self.hook_resid(x)


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.hook_embed = nn.Identity()
        self.blocks = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.wte.weight  # tied input/output embeddings
        if config.init == "gpt2":
            self.apply(self._init_weights)
            # GPT-2's scaled init of the projections into the residual stream
            for name, p in self.named_parameters():
                if name.endswith("c_proj.weight"):
                    nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))
        # init="torch": the modules keep the initialisation PyTorch gave them on construction

    @staticmethod
    def _init_weights(module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.wpe.weight.numel() if non_embedding else n

    def set_attention_impl(self, impl: str) -> None:
        """Switch every attention module between "fast" and "reference" (same weights)."""
        if impl not in IMPLEMENTATIONS:
            raise ValueError(f"unknown attention implementation {impl!r}; "
                             f"valid choices: {', '.join(IMPLEMENTATIONS)}")
        for block in self.blocks:
            block.attn.impl = impl

    def set_attention_window(self, window: int | None, keep: int = 0) -> None:
        """Evaluate with a sliding window: each query sees its `window` latest tokens plus the
        first `keep` positions (through the materialising path). None restores full attention."""
        if window is not None and (not isinstance(window, int) or isinstance(window, bool)
                                   or window < 1):
            raise ValueError(f"window must be a positive integer or None, got {window!r}")
        if not isinstance(keep, int) or isinstance(keep, bool) or keep < 0:
            raise ValueError(f"keep must be a non-negative integer, got {keep!r}")
        for block in self.blocks:
            block.attn.window, block.attn.keep = window, (keep if window is not None else 0)

    def forward(self, idx, targets=None):
        B, T = idx.shape
        if T > self.config.block_size:
            raise ValueError(f"sequence length {T} exceeds block_size {self.config.block_size}")
        pos = torch.arange(T, device=idx.device)
        x = self.drop(self.hook_embed(self.wte(idx) + self.wpe(pos)))  # (B, T, C)
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))  # (B, T, vocab)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1),
                                   ignore_index=-1)
        return logits, loss

    def configure_optimizer(self, weight_decay: float, lr: float, betas, device_type: str,
                            kind: str = "adamw", momentum: float = 0.9, sink_lr: float = 0.0):
        """AdamW (or SGD with momentum: Guo et al.'s control, under which the BOS peak does not
        grow) with weight decay on matrices (dim >= 2) only, not on biases, norms or sinks.
        sink_lr > 0 puts the learned sinks in a third group whose learning rate is sink_lr
        whenever the others' is lr (its "lr_scale", sink_lr / lr, which train's schedule keeps)."""
        if kind not in OPTIMIZERS:
            raise ValueError(f"optimizer {kind!r} is not one of {', '.join(OPTIMIZERS)}")
        if sink_lr < 0:
            raise ValueError(f"sink_lr must be >= 0 (0: the sink trains at lr), got {sink_lr}")
        named = [(n, p) for n, p in self.named_parameters() if p.requires_grad]
        sinks = [p for n, p in named if sink_lr > 0 and n.rsplit(".", 1)[-1] == "sink"]
        params = [p for _, p in named if not any(p is s for s in sinks)]
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        if sinks:
            groups.append({"params": sinks, "weight_decay": 0.0, "lr": sink_lr,
                           "lr_scale": sink_lr / lr})
        extra = {"fused": True} if device_type == "cuda" else {}
        if kind == "sgd":
            return torch.optim.SGD(groups, lr=lr, momentum=momentum, **extra)
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), **extra)
