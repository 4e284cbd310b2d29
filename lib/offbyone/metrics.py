"""Outliers, attention sinks and losses of a trained GPT, with the literature's definitions.

Definitions (Bondarenko et al. 2023; Gu et al. 2025; see the paper's methods section):
- kurtosis: Pearson, non-excess (a Gaussian gives 3), mu4 / (sigma^4 + eps), per sequence over the
  flattened T x d values of a module's output, averaged over the evaluation sequences;
- inf-norm: per-sequence max |x| of a module's output, averaged over sequences;
- outlier: a value more than 6 standard deviations from its (per-sequence) tensor's mean;
- headline aggregates (avg/max kurtosis, max inf-norm) over Bondarenko et al.'s module set
  (`ANCHOR_KINDS`: ln_1, attn_proj, ln_2, mlp_out, resid per layer, and ln_f); the extended set
  (embedding, attention output before its projection, MLP hidden) is summarised beside it;
- first-position attention: mean weight on position 0 over queries t >= 1 (query 0 can only
  see position 0, where softmax puts exactly 1), with the uniform causal baseline over the same
  queries, (H_T - 1) / (T - 1);
- first-position residual peak (Guo et al. 2024): the L2 norm of the residual stream at position
  0 (the BOS token where there is one) after the embedding and after each block, averaged over
  sequences, and its ratio to the median norm over every other (sequence, position);
- sink rate: share of heads whose mean attention on the first position, averaged over all
  queries, exceeds 0.3 at T = 64 (Gu et al.'s definition; its uniform baseline is H_T / T).

Statistics are streamed batch by batch through forward hooks: nothing like the whole activation
history is kept.
"""
from __future__ import annotations

import math
import string
from collections import defaultdict

import torch

KURTOSIS_EPS = 1e-12
OUTLIER_SIGMAS = 6.0
SINK_THRESHOLD = 0.3
SINK_T = 64
DELIMITERS = set(string.whitespace) | set(string.punctuation)
# Bondarenko et al.'s ACT_KEYS, in this model's names: per layer and the final LayerNorm
ANCHOR_KINDS = ("ln_1", "attn_proj", "ln_2", "mlp_out", "resid", "ln_f")
# Magnitude beside kurtosis: the 99.99th percentile of |x| per sequence (what a quantization
# range sees, without the single largest value), and kurtosis over the active positions only:
# those whose output vector's L2 norm is at least ACTIVE_FRACTION of the sequence's
# root-mean-square position norm. A head that abstains writes (near) zero at whole positions; those positions
# pile up at 0 and raise kurtosis without any large value, so the active kurtosis leaves them
# out (positions, not single values: dropping small values would itself fatten the tails).
MAGNITUDE_QUANTILE = 0.9999
ACTIVE_FRACTION = 0.05


def _wide(x: torch.Tensor) -> torch.Tensor:
    """float64 for accumulating statistics (float32 on MPS, which has no float64)."""
    return x.detach().to(torch.float32 if x.device.type == "mps" else torch.float64)


def kurtosis(x: torch.Tensor, dim=None, eps: float = KURTOSIS_EPS) -> torch.Tensor:
    """Pearson (non-excess) kurtosis mu4 / (sigma^4 + eps) over `dim` (all elements if None)."""
    x = _wide(x)
    if dim is None:
        x, dim = x.flatten(), 0
    c = x - x.mean(dim=dim, keepdim=True)
    var = c.pow(2).mean(dim=dim)
    return c.pow(4).mean(dim=dim) / (var.pow(2) + eps)


def uniform_first_position_mass(T: int, skip_first: bool = False) -> float:
    """The first-position attention of uniform causal heads: mean over queries of 1/(t + 1),
    t = 0..T-1 (H_T / T), or over t = 1..T-1 with skip_first ((H_T - 1) / (T - 1))."""
    queries = range(1 if skip_first else 0, T)
    if not queries:
        raise ValueError(f"no query to average over at T = {T}")
    return sum(1.0 / (t + 1) for t in queries) / len(queries)


def token_classes(itos: list[str], bos_id: int | None,
                  extra: dict[str, list[int]] | None = None) -> dict[str, torch.Tensor]:
    """Boolean masks over the vocabulary: 'delimiter' (whitespace or punctuation characters),
    'bos', and any classes a corpus names by token id in its meta.json (`token_classes`): the
    testbed's 'trigger'; a BPE vocabulary's own 'delimiter' (tokens made only of whitespace or
    punctuation, replacing the character rule) and 'word_start'."""
    delim = torch.tensor([(s in DELIMITERS) for s in itos], dtype=torch.bool)
    bos = torch.zeros(len(itos), dtype=torch.bool)
    if bos_id is not None:
        bos[bos_id] = True
    out = {"delimiter": delim, "bos": bos}
    for name, ids in (extra or {}).items():
        if name == "bos":
            raise ValueError(f"corpus token class {name!r} clashes with a built-in class")
        mask = torch.zeros(len(itos), dtype=torch.bool)
        mask[torch.as_tensor(ids, dtype=torch.long)] = True
        out[name] = mask
    if bos_id is not None:
        out["delimiter"][bos_id] = False
    return out


def activation_modules(model) -> dict[str, torch.nn.Module]:
    """The measured module outputs, by name ('blocks.{i}.{kind}' and 'embed', 'ln_f')."""
    mods = {"embed": model.hook_embed}
    for i, b in enumerate(model.blocks):
        mods.update({f"blocks.{i}.ln_1": b.ln_1, f"blocks.{i}.attn_out": b.attn.hook_out,
                     f"blocks.{i}.attn_proj": b.attn.hook_proj, f"blocks.{i}.ln_2": b.ln_2,
                     f"blocks.{i}.mlp_hidden": b.mlp.hook_hidden,
                     f"blocks.{i}.mlp_out": b.mlp.hook_out, f"blocks.{i}.resid": b.hook_resid})
    mods["ln_f"] = model.ln_f
    return mods


def module_kind(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def active_kurtosis(x: torch.Tensor, fraction: float = ACTIVE_FRACTION):
    """Per sequence of x (B, T, d): Pearson's kurtosis over the values at the active positions
    (L2 norm at least `fraction` of the sequence's root-mean-square position norm: a median
    would be 0 once most positions abstain), and the share of positions that are active.
    Float64 throughout."""
    x = _wide(x)
    norms = x.norm(dim=-1)                                          # (B, T)
    rms = norms.pow(2).mean(dim=1, keepdim=True).sqrt()
    active = norms >= fraction * rms
    w = active.unsqueeze(-1).expand_as(x).to(x.dtype)               # (B, T, d)
    n = w.sum((1, 2)).clamp(min=1)
    mean = (x * w).sum((1, 2)) / n
    c = (x - mean[:, None, None]) * w
    var = c.pow(2).sum((1, 2)) / n
    k = (c.pow(4).sum((1, 2)) / n) / (var.pow(2) + KURTOSIS_EPS)
    return k, active.to(x.dtype).mean(1)


class _ActivationStats:
    """Streaming per-module statistics of (B, T, d) outputs."""

    def __init__(self):
        self.n_seq = 0
        self.kurt_sum = 0.0
        self.inf_sum = 0.0
        self.max_abs = 0.0
        self.q_sum = 0.0                     # the per-sequence 99.99th percentile of |x|
        self.active_kurt_sum = 0.0           # kurtosis over the active positions
        self.active_share_sum = 0.0
        self.n_values = 0
        self.n_outliers = 0
        self.out_class = defaultdict(int)
        self.out_pos0 = 0
        self.dim_counts = None

    def update(self, x: torch.Tensor, masks: dict[str, torch.Tensor]):
        """x (B, T, d); masks {class name: (B, T) bool} of the input tokens."""
        x = _wide(x)                                              # (B, T, d)
        B, T, d = x.shape
        flat = x.reshape(B, -1)
        mean = flat.mean(1, keepdim=True)
        c = flat - mean
        var = c.pow(2).mean(1)
        self.kurt_sum += (c.pow(4).mean(1) / (var.pow(2) + KURTOSIS_EPS)).sum().item()
        self.inf_sum += flat.abs().amax(1).sum().item()
        self.max_abs = max(self.max_abs, flat.abs().max().item())
        self.q_sum += torch.quantile(flat.abs(), MAGNITUDE_QUANTILE, dim=1).sum().item()
        k, share = active_kurtosis(x)
        self.active_kurt_sum += k.sum().item()
        self.active_share_sum += share.sum().item()
        self.n_seq += B
        self.n_values += flat.numel()
        out = (c.abs() > OUTLIER_SIGMAS * var.sqrt().unsqueeze(1)).reshape(B, T, d)
        self.n_outliers += int(out.sum())
        per_pos = out.sum(-1)                                     # (B, T)
        for name, m in masks.items():
            self.out_class[name] += int(per_pos[m].sum())
        self.out_pos0 += int(per_pos[:, 0].sum())
        dims = out.sum((0, 1)).long().cpu()
        self.dim_counts = dims if self.dim_counts is None else self.dim_counts + dims

    def result(self, top_dims: int = 5) -> dict:
        n = max(self.n_outliers, 1)
        top = []
        if self.dim_counts is not None and self.n_outliers:
            counts, idx = self.dim_counts.topk(min(top_dims, len(self.dim_counts)))
            top = [[int(i), int(c)] for i, c in zip(idx, counts) if c > 0]
        return {"kurtosis": self.kurt_sum / self.n_seq, "inf_norm": self.inf_sum / self.n_seq,
                "p9999": self.q_sum / self.n_seq,
                "active_kurtosis": self.active_kurt_sum / self.n_seq,
                "active_share": self.active_share_sum / self.n_seq,
                "max_abs": self.max_abs, "n_outliers": self.n_outliers,
                "outlier_rate": self.n_outliers / max(self.n_values, 1),
                "outlier_share_pos0": self.out_pos0 / n if self.n_outliers else None,
                **{f"outlier_share_{k}": (v / n if self.n_outliers else None)
                   for k, v in self.out_class.items()},
                "outlier_top_dims": top}


@torch.no_grad()
def activation_statistics(model, seqs: torch.Tensor, classes: dict, batch_size: int = 16) -> dict:
    """Per-module kurtosis, inf-norm and outlier positions over the sequences `seqs` (N, T)."""
    stats = defaultdict(_ActivationStats)
    current = {}
    handles = []
    for name, mod in activation_modules(model).items():
        def hook(m, i, o, name=name):
            stats[name].update(o, current)
        handles.append(mod.register_forward_hook(hook))
    n_pos, n_class = 0, defaultdict(int)
    try:
        for s in range(0, len(seqs), batch_size):
            x = seqs[s:s + batch_size]
            current.clear()
            current.update({name: mask[x] for name, mask in classes.items()})
            n_pos += x.numel()
            for name, m in current.items():
                n_class[name] += int(m.sum())
            model(x)
    finally:
        for h in handles:
            h.remove()
    modules = {name: st.result() for name, st in stats.items()}
    T = seqs.shape[1]
    return {"modules": modules,
            "base_rates": {"pos0": 1.0 / T, **{k: v / n_pos for k, v in n_class.items()}}}


def summarize_activations(modules: dict) -> dict:
    """The literature's aggregates over modules, overall and per module kind."""
    def agg(names):
        k = [modules[n]["kurtosis"] for n in names]
        inf = [modules[n]["inf_norm"] for n in names]
        n_out = sum(modules[n]["n_outliers"] for n in names)

        def share(key):
            if not n_out:
                return None
            return sum((modules[n][key] or 0) * modules[n]["n_outliers"] for n in names) / n_out
        imax = max(range(len(names)), key=lambda i: k[i])
        jmax = max(range(len(names)), key=lambda i: inf[i])
        q = [modules[n].get("p9999", float("nan")) for n in names]
        ak = [modules[n].get("active_kurtosis", float("nan")) for n in names]
        return {"avg_kurtosis": sum(k) / len(k), "max_kurtosis": k[imax],
                "max_p9999": max(q), "max_active_kurtosis": max(ak),
                "avg_active_kurtosis": sum(ak) / len(ak),
                "max_kurtosis_module": names[imax], "max_inf_norm": inf[jmax],
                "max_inf_norm_module": names[jmax],
                "avg_inf_norm": sum(inf) / len(inf), "n_outliers": n_out,
                **{k: share(k) for k in sorted({k for n in names for k in modules[n]
                                                 if k.startswith("outlier_share_")})}}
    names = sorted(modules)
    kinds = defaultdict(list)
    for n in names:
        kinds[module_kind(n)].append(n)
    anchor = [n for n in names if module_kind(n) in ANCHOR_KINDS]
    # without the last layer's residual (the final block's output and ln_f): outlier dimensions
    # there are a frequent-token effect, not the no-op mechanism (REFERENCES.md)
    last = max((int(n.split(".")[1]) for n in names if n.startswith("blocks.")), default=None)
    inner = [n for n in anchor if n != "ln_f" and n != f"blocks.{last}.resid"]
    return {"anchor": agg(anchor), "anchor_inner": agg(inner) if inner else None,
            "all": agg(names), "by_kind": {k: agg(v) for k, v in kinds.items()}}


class _AttentionSums:
    """Running sums, per layer and head, over the queries of every sequence seen: attention on
    the first key from queries t >= 1 and from all queries (the sink rate's), on it from late
    queries (t >= T/2), on delimiter keys, the abstention mass,
    gate values, and (on the testbed) the first key's attention split by trigger queries."""

    def __init__(self, L: int, H: int, has_trigger: bool, has_gate: bool):
        def zeros():
            return torch.zeros(L, H, dtype=torch.float64)
        self.H = H
        self.first, self.first_late, self.delimiter, self.abstain = zeros(), zeros(), zeros(), zeros()
        self.first_all = zeros()
        self.first_trig = zeros() if has_trigger else None
        self.first_other = zeros() if has_trigger else None
        self.gate = zeros() if has_gate else None
        self.n_seqs, self.n_trig, self.n_other = 0, 0, 0
        self.delim = self.trigger = None                           # the current batch's classes

    def batch(self, x: torch.Tensor, classes: dict) -> None:
        self.delim = classes["delimiter"][x]
        self.n_seqs += len(x)
        if self.first_trig is not None:
            self.trigger = classes["trigger"][x][:, 1:]             # queries t >= 1
            self.n_trig += int(self.trigger.sum())
            self.n_other += int((~self.trigger).sum())

    def add_probs(self, li: int, p: torch.Tensor) -> None:
        p = _wide(p)                                                # (B, H, T, T)
        T = p.shape[-1]
        self.first[li] += p[:, :, 1:, 0].mean(-1).sum(0).cpu()
        self.first_all[li] += p[..., 0].mean(-1).sum(0).cpu()
        self.first_late[li] += p[:, :, T // 2:, 0].mean(-1).sum(0).cpu()
        key_delim = self.delim.to(p.dtype)[:, None, None, :]       # (B, 1, 1, T)
        self.delimiter[li] += (p * key_delim).sum(-1).mean(-1).sum(0).cpu()
        self.abstain[li] += (1.0 - p.sum(-1)).mean(-1).sum(0).cpu()
        if self.first_trig is not None:
            q = self.trigger.to(p.dtype)[:, None, :]                # (B, 1, T)
            self.first_trig[li] += (p[:, :, 1:, 0] * q).sum((0, 2)).cpu()
            self.first_other[li] += (p[:, :, 1:, 0] * (1 - q)).sum((0, 2)).cpu()

    def add_gate(self, li: int, g: torch.Tensor, headwise: bool) -> None:
        g = _wide(g)
        if headwise:                                                # (B, H, T) -> (B, H)
            per_head = g.mean(-1)
        else:                                                       # (B, T, C) -> (B, H)
            per_head = g.view(g.shape[0], g.shape[1], self.H, -1).mean((1, 3))
        self.gate[li] += per_head.sum(0).cpu()

    def result(self, T: int) -> dict:
        n = self.n_seqs
        first, late, first_all = self.first / n, self.first_late / n, self.first_all / n
        delimiter, abstain = self.delimiter / n, self.abstain / n
        gate = self.gate / n if self.gate is not None else None
        split = {}
        if self.first_trig is not None:
            trig = self.first_trig / max(self.n_trig, 1)
            other = self.first_other / max(self.n_other, 1)
            split = {"first_position_trigger_queries": trig.tolist(),
                     "first_position_other_queries": other.tolist(),
                     "mean_first_position_trigger_queries": trig.mean().item(),
                     "mean_first_position_other_queries": other.mean().item(),
                     "max_head_first_position_other_queries": other.max().item(),
                     "n_trigger_queries": self.n_trig}
        return {"T": T, **split,
                "first_position": first.tolist(),
                "first_position_all_queries": first_all.tolist(),
                "first_position_late_queries": late.tolist(),
                "delimiter": delimiter.tolist(),
                "abstention": abstain.tolist(),
                "mean_first_position": first.mean().item(),
                "max_head_first_position": first.max().item(),
                "mean_abstention": abstain.mean().item(),
                "mean_delimiter": delimiter.mean().item(),
                "uniform_first_position": uniform_first_position_mass(T, skip_first=True),
                "uniform_first_position_all_queries": uniform_first_position_mass(T),
                "max_head_first_position_all_queries": first_all.max().item(),
                "sink_rate": (first_all > SINK_THRESHOLD).double().mean().item(),
                "sink_threshold": SINK_THRESHOLD,
                "gate": gate.tolist() if gate is not None else None,
                "mean_gate": gate.mean().item() if gate is not None else None}


@torch.no_grad()
def attention_statistics(model, seqs: torch.Tensor, classes: dict, batch_size: int = 16) -> dict:
    """Per layer and head: mean attention on the first position (queries t >= 1, and all
    queries for the sink rate) and on delimiter keys, and the abstention mass 1 - sum of weights
    (non-zero only for sink variants). Needs the reference path (materialised probabilities)."""
    old_impl = model.blocks[0].attn.impl
    model.set_attention_impl("reference")
    has_gate = model.blocks[0].attn.gate != "none"
    sums = _AttentionSums(len(model.blocks), model.config.n_head, "trigger" in classes, has_gate)
    handles = []
    for li, b in enumerate(model.blocks):
        handles.append(b.attn.hook_probs.register_forward_hook(
            lambda m, i, p, li=li: sums.add_probs(li, p)))
        if has_gate:
            headwise = b.attn.gate == "gated" or b.attn.outgate_mode == "headwise"
            handles.append(b.attn.hook_gate.register_forward_hook(
                lambda m, i, g, li=li, hw=headwise: sums.add_gate(li, g, hw)))
    try:
        for s in range(0, len(seqs), batch_size):
            x = seqs[s:s + batch_size]
            sums.batch(x, classes)
            model(x)
    finally:
        for h in handles:
            h.remove()
        model.set_attention_impl(old_impl)
    return sums.result(seqs.shape[1])


@torch.no_grad()
@torch.no_grad()
def residual_peak(model, seqs: torch.Tensor, batch_size: int = 16) -> dict:
    """Guo et al.'s massive-residual measure: per layer (the embedding, then each block's output),
    the mean L2 norm of the residual at position 0 over sequences, the median L2 norm over every
    other (sequence, position), and their ratio. `max_ratio` is the largest ratio after a block.

    The state at position 0 is the BOS token's where the windows carry one; a ratio near 1 means
    no peak (at initialisation both are the norm of an embedding), Guo's 3-layer model reached
    about 6 (141 against a start near 24) in 10k Adam steps."""
    if seqs.size(1) < 2:
        raise ValueError("the residual peak needs sequences of at least 2 positions")
    names = ["embed"] + [f"blocks.{i}" for i in range(len(model.blocks))]
    mods = [model.hook_embed] + [b.hook_resid for b in model.blocks]
    norms: dict[str, list] = {n: [] for n in names}
    handles = [m.register_forward_hook(lambda m, i, o, n=n: norms[n].append(
        _wide(o).norm(dim=-1).cpu())) for n, m in zip(names, mods)]
    was_training = model.training
    model.eval()
    try:
        for i in range(0, seqs.size(0), batch_size):
            model(seqs[i:i + batch_size])
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    layers = []
    for n in names:
        x = torch.cat(norms[n])                       # (N, T) per-position L2 norms
        first, other = x[:, 0].mean().item(), x[:, 1:].flatten().median().item()
        layers.append({"layer": n, "first_norm": first, "median_other_norm": other,
                       "ratio": first / other if other > 0 else math.inf})
    blocks = layers[1:]
    top = max(blocks, key=lambda r: r["ratio"])
    return {"layers": layers, "max_ratio": top["ratio"], "max_ratio_layer": top["layer"],
            "max_first_norm": max(r["first_norm"] for r in blocks)}


def loss_on(model, seqs: torch.Tensor, targets: torch.Tensor, batch_size: int = 32) -> float:
    """Mean next-token cross-entropy (nats) over (N, T) windows."""
    return losses_on(model, seqs, targets, None, batch_size)[0]


@torch.no_grad()
def losses_on(model, seqs: torch.Tensor, targets: torch.Tensor, query_mask: torch.Tensor | None,
              batch_size: int = 32) -> tuple[float, float | None]:
    """loss_on's mean loss, and from the same forward passes the mean loss at the positions
    whose input token is in a class (`query_mask` over ids: on the testbed, the copy after a
    trigger, where attention is needed); None without a mask or where no position is in it."""
    total, n, tot_in, n_in = 0.0, 0, 0.0, 0
    for s in range(0, len(seqs), batch_size):
        x, y = seqs[s:s + batch_size], targets[s:s + batch_size]
        logits, loss = model(x, y)
        total += loss.item() * y.numel()
        n += y.numel()
        if query_mask is not None:
            m = query_mask[x]
            nll = torch.nn.functional.cross_entropy(logits.float()[m], y[m], reduction="sum")
            tot_in += float(nll.double())
            n_in += int(m.sum())
    return total / n, (tot_in / n_in if n_in else None)


@torch.no_grad()
def loss_by_class(model, seqs: torch.Tensor, targets: torch.Tensor, query_mask: torch.Tensor,
                  batch_size: int = 32) -> dict:
    """Mean next-token loss (nats) at positions whose input token is in a class (query_mask
    True) and at the others: on the testbed, the copy positions after a trigger and the
    bigram positions."""
    tot = {"in": 0.0, "out": 0.0}
    n = {"in": 0, "out": 0}
    for s in range(0, len(seqs), batch_size):
        x, y = seqs[s:s + batch_size], targets[s:s + batch_size]
        logits, _ = model(x)
        nll = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), y.reshape(-1),
                                                reduction="none").view_as(y).double()
        m = query_mask[x]
        tot["in"] += nll[m].sum().item()
        tot["out"] += nll[~m].sum().item()
        n["in"] += int(m.sum())
        n["out"] += int((~m).sum())
    return {"in_class": tot["in"] / n["in"] if n["in"] else None,
            "other": tot["out"] / n["out"] if n["out"] else None,
            "n_in_class": n["in"], "n_other": n["out"]}


@torch.no_grad()
def windowed_losses(model, seqs: torch.Tensor, targets: torch.Tensor, windows, keeps,
                    batch_size: int = 32) -> dict:
    """StreamingLLM's test as an evaluation-time mask: next-token loss when every query sees only
    its `window` latest tokens plus the first `keep` positions, for each window and keep, beside
    full causal attention. The loss is taken at the positions t >= window + max(keeps), where
    every setting has evicted something, so all cells of the grid score the same targets.
    Windows that leave no such position (window + max(keeps) >= T) are skipped."""
    T = seqs.shape[1]
    keeps = sorted(set(int(k) for k in keeps))
    grid = []
    old = (model.blocks[0].attn.window, model.blocks[0].attn.keep)

    def loss_from(start, window, keep):
        model.set_attention_window(window, keep)
        total, n = 0.0, 0
        for s in range(0, len(seqs), batch_size):
            logits, _ = model(seqs[s:s + batch_size])
            lg, y = logits[:, start:].float(), targets[s:s + batch_size, start:]
            total += torch.nn.functional.cross_entropy(
                lg.reshape(-1, lg.shape[-1]), y.reshape(-1), reduction="sum").item()
            n += y.numel()
        return total / n

    try:
        for w in sorted(set(int(w) for w in windows)):
            start = w + max(keeps)
            if start >= T:
                continue
            full = loss_from(start, None, 0)
            for k in keeps:
                grid.append({"window": w, "keep": k, "start": start, "loss": loss_from(start, w, k),
                             "full_loss": full})
    finally:
        model.set_attention_window(*old)
    return {"T": T, "grid": grid}


def weight_kurtosis(model) -> dict:
    """Pearson kurtosis of every weight matrix (parameters with 2 or more dimensions)."""
    return {n: kurtosis(p.detach()).item() for n, p in model.named_parameters() if p.dim() >= 2}


def bits_per_token(loss_nats: float) -> float:
    return loss_nats / math.log(2)
