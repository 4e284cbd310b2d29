"""Seeds of one small model trained as one ensemble: a lever for launch-bound GPU steps.

A small model's step on a GPU costs the time to launch its kernels, not its FLOPs
(results/gpu/check.json: 8 ms for the 2-layer testbed model). Runs that differ only in their
seed can share those launches: their weights are stacked (`torch.func.stack_module_state`), one
`vmap`-ed forward and backward computes every member's loss and gradient at once, and one AdamW
over the stacked tensors updates them all (AdamW is elementwise, so this is each member's own
AdamW). Each member sees the batches its own run would see (its seed's data generator), starts
from the weights its own run would start from, and ends with the records its own run would
leave: `log.jsonl`, checkpoints that `train()` resumes and `measure()` reads, and
`train_summary.json`. A test checks the members against separate runs.

Members use the materialising attention (`attention_impl: reference`): the fused kernels have no
batching rule under `vmap` (it would loop over members). The math is the same; the numbers
agree with the fused path to float rounding (tests/test_model.py).

Limits, refused with a clear error: dropout (random masks under vmap), several processes (DDP),
and runs whose configurations differ in anything but the seed and the folder.
"""
from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import torch
from torch.func import functional_call, stack_module_state, vmap

from .checkpoint import save_checkpoint
from .config import ConfigError, TrainConfig
from .data import prepare_for
from .device import autocast_for, pick_device
from .io import write_json
from .model import GPT
from .provenance import git_sha, loaded_code
from .tokens import TokenData
from .train import (_Meter, _peak_record, _progress_bar, _RunLog, _set_lr, checkpoint_path,
                    evaluate, list_checkpoints, lr_at)

SEED_KEYS = {"seed", "out_dir"}


def check_members(cfgs: list[TrainConfig]) -> None:
    """Refuse what an ensemble cannot train the way separate runs would."""
    if not cfgs:
        raise ConfigError("an ensemble needs at least one run")
    first = cfgs[0].to_dict()
    for cfg in cfgs[1:]:
        d = cfg.to_dict()
        diff = [k for k in d if k not in SEED_KEYS and d[k] != first[k]]
        if diff:
            raise ConfigError(f"ensemble members may differ only in seed and out_dir; "
                              f"{cfg.out_dir} differs in {', '.join(diff)}")
    if len({c.seed for c in cfgs}) < len(cfgs) or len({c.out_dir for c in cfgs}) < len(cfgs):
        raise ConfigError("ensemble members need distinct seeds and folders")
    if cfgs[0].init_from:
        raise ConfigError("an ensemble cannot start from a checkpoint (init_from); train a "
                          "retrofit's runs one by one (offbyone.train)")
    if cfgs[0].sink_lr:
        raise ConfigError("an ensemble keeps two parameter groups; train runs with their own "
                          "sink learning rate (sink_lr) one by one (offbyone.train)")
    if 0 in cfgs[0].checkpoint_steps():
        raise ConfigError("an ensemble writes no checkpoint at step 0 (checkpoint_fractions "
                          "0.0); leave it out, or train the runs one by one")
    if cfgs[0].dropout > 0:
        raise ConfigError("an ensemble cannot train with dropout (its masks would not match "
                          "the separate runs'); set dropout 0 or train the runs one by one")


def _member_model(mconf, stacked: dict, i: int, device) -> GPT:
    """Member i as an ordinary GPT module (for evaluation and checkpoints)."""
    model = GPT(mconf).to(device)
    missing, unexpected = model.load_state_dict({k: v[i].detach() for k, v in stacked.items()},
                                                strict=False)
    tied = {"lm_head.weight"} if mconf.tie_embeddings else set()
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"ensemble member state does not fit the model: missing {missing}, "
                           f"unexpected {unexpected}")
    return model


def train_ensemble(cfgs: list[TrainConfig], on_step=None) -> list[dict]:
    """Train the runs `cfgs` (the same configuration but for seed and folder) as one ensemble,
    from scratch or, when every member has a checkpoint at the same step, from there. Returns
    each member's summary, as `train()` would."""
    cfgs = [copy.deepcopy(c) for c in cfgs]
    for c in cfgs:
        c.attention_impl = "reference"       # vmap-able: the fused kernels have no batching rule
        c.validate()
    check_members(cfgs)
    cfg = cfgs[0]
    device = pick_device(cfg.device)
    if cfg.threads and device.type == "cpu":
        torch.set_num_threads(cfg.threads)
    autocast = autocast_for(device)
    data_dir = prepare_for(cfg)
    data = TokenData(data_dir)
    mconf = cfg.model_config(data.vocab_size)
    done = [json.loads((Path(c.out_dir) / "train_summary.json").read_text())
            for c in cfgs if (Path(c.out_dir) / "train_summary.json").exists()]
    if len(done) == len(cfgs):
        return done
    from .checkpoint import load_checkpoint
    from .train import _check_resumable
    states = []
    for c in cfgs:
        ckpts = list_checkpoints(c.out_dir)
        states.append(load_checkpoint(ckpts[-1]) if ckpts else None)
    steps = {s["step"] if s else 0 for s in states}
    if len(steps) > 1:
        raise ConfigError(f"ensemble members are at different steps ({sorted(steps)}): resume "
                          "them one by one with train(), or delete their folders")
    start = steps.pop()
    members, gens = [], []
    for c, st in zip(cfgs, states):
        torch.manual_seed(c.seed)                 # each member's own initialisation
        m = GPT(mconf).to(device)
        g = torch.Generator().manual_seed(c.seed)  # its own data order (rank 0 of train())
        if st is not None:
            _check_resumable(st, c, Path(c.out_dir))
            m.load_state_dict(st["model"])
            g.set_state(st["rng"]["data"][0])
        members.append(m)
        gens.append(g)
    params, buffers = stack_module_state(members)
    params = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    with torch.device("meta"):                   # the shape; its (tied) weights come from params
        base = GPT(mconf)
    names = list(params)
    # the groups configure_optimizer makes, by the member's own dimension
    decay = [params[n] for n in names if params[n].dim() - 1 >= 2]
    no_decay = [params[n] for n in names if params[n].dim() - 1 < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    else:
        opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    if start:
        _load_stacked_optimizer(opt, params, names, members, states, cfg)

    def loss_of(p, b, x, y):
        return functional_call(base, (p, b), (x, y))[1]
    step_losses = vmap(loss_of)

    eval_gen = torch.Generator().manual_seed(cfg.eval_seed)
    eval_batches = [data.get_batch("val", cfg.batch_size, cfg.block_size, eval_gen, cfg.bos)
                    for _ in range(cfg.eval_batches)]
    E = len(cfgs)
    logs = [_RunLog(Path(c.out_dir) / "log.jsonl", start, True) for c in cfgs]
    elapsed = [s["extra"].get("elapsed_s", 0.0) if s else 0.0 for s in states]
    val = [s["extra"].get("val_loss") if s else None for s in states]

    def evaluate_all(step: int) -> list[dict]:
        recs = []
        for i in range(E):
            m = _member_model(mconf, {**params, **buffers}, i, device)
            val[i] = evaluate(m, eval_batches, device, autocast)
            recs.append({"val_loss": val[i], **_peak_record(m, eval_batches, device, cfg.bos)})
        return recs

    if start == 0:
        for log, rec in zip(logs, evaluate_all(0)):
            log.write({"step": 0, "val_loss": rec["val_loss"],
                       **{k: v for k, v in rec.items() if k != "val_loss"}, "elapsed_s": 0.0})
    meters = [_Meter(cfg.batch_size * cfg.block_size) for _ in range(E)]
    bar = _progress_bar(cfg, start, True)
    bar.set_description(f"{cfg.attention} ensemble of {E} seeds")
    ckpt_steps = set(cfg.checkpoint_steps())
    for step in range(start, cfg.max_steps):
        t0 = time.perf_counter()
        lr = _set_lr(opt, lr_at(step, cfg))
        xs, ys = zip(*(data.get_batch("train", cfg.batch_size, cfg.block_size, g, cfg.bos)
                       for g in gens))
        X, Y = torch.stack(xs).to(device), torch.stack(ys).to(device)
        with autocast:
            losses = step_losses(params, buffers, X, Y)
        if not torch.isfinite(losses).all():
            raise FloatingPointError(f"training loss {losses.tolist()} at step {step + 1} "
                                     f"(attention {cfg.attention}, ensemble of seeds "
                                     f"{[c.seed for c in cfgs]}); stopped")
        opt.zero_grad(set_to_none=True)
        losses.sum().backward()                   # each member's own gradient
        if cfg.grad_clip > 0:
            _clip_per_member(params, cfg.grad_clip, E)
        opt.step()
        done = step + 1
        dt = (time.perf_counter() - t0) / E        # each member's share of the step
        logging = done % cfg.log_interval == 0 or done == cfg.max_steps
        recs, values = [], losses.detach().float().tolist()     # one device sync a step
        for i in range(E):
            elapsed[i] += dt
            recs.append(meters[i].add(values[i], lr if logging else None, _NoBar()))
        if done % cfg.eval_interval == 0 or done == cfg.max_steps:
            for rec, ev in zip(recs, evaluate_all(done)):
                rec.update(ev)
            for m in meters:
                m.skip_time()
        for i, rec in enumerate(recs):
            if rec:
                logs[i].write({"step": done, **rec, "elapsed_s": elapsed[i]})
        if done in ckpt_steps:
            _save_members(cfgs, mconf, params, buffers, opt, names, gens, done, elapsed, val,
                          data_dir, device)
        bar.update(1)
        if on_step is not None:
            on_step(done)
    bar.close()
    out = []
    for i, c in enumerate(cfgs):
        s = {"out_dir": str(c.out_dir), "attention": c.attention, "seed": c.seed,
             "steps": c.max_steps,
             "final_checkpoint": str(checkpoint_path(Path(c.out_dir), c.max_steps)),
             "val_loss": val[i], "tokens_per_s": meters[i].tokens_per_s,
             "train_elapsed_s": elapsed[i], "world_size": 1, "device": str(device),
             "n_params": members[i].num_params(), "ensemble_of": E}
        logs[i].write({"step": c.max_steps, "event": "done", **s})
        logs[i].close()
        write_json(Path(c.out_dir) / "train_summary.json", s)
        out.append(s)
    return out


class _NoBar:
    def set_postfix(self, **kw):
        pass


def _clip_per_member(params: dict, max_norm: float, E: int) -> None:
    """clip_grad_norm_ on each member's own gradients (the stacked tensors' slices)."""
    sq = torch.zeros(E, device=next(iter(params.values())).device)
    for p in params.values():
        if p.grad is not None:
            sq += p.grad.detach().float().pow(2).reshape(E, -1).sum(1)
    coef = (max_norm / (sq.sqrt() + 1e-6)).clamp(max=1.0)
    for p in params.values():
        if p.grad is not None:
            p.grad.mul_(coef.view(E, *([1] * (p.dim() - 1))).to(p.grad.dtype))


def _member_optimizer(model: GPT, opt, params: dict, names: list[str], i: int, cfg):
    """Member i's optimizer, as train() builds it, holding the slices of the stacked state."""
    own = model.configure_optimizer(cfg.weight_decay, cfg.lr, (cfg.beta1, cfg.beta2), "cpu",
                                    cfg.optimizer, cfg.momentum)
    by_name = dict(model.named_parameters())
    for g_own, g in zip(own.param_groups, opt.param_groups):
        g_own["lr"] = g["lr"]
    for n in names:
        st = opt.state.get(params[n])
        if not st:
            continue
        own.state[by_name[n]] = {k: (v[i].detach().clone() if torch.is_tensor(v) and v.dim() > 0
                                     else (v.clone() if torch.is_tensor(v) else v))
                                 for k, v in st.items()}
    return own


def _save_members(cfgs, mconf, params, buffers, opt, names, gens, step, elapsed, val, data_dir,
                  device):
    for i, c in enumerate(cfgs):
        model = _member_model(mconf, {**params, **buffers}, i, device)
        own = _member_optimizer(model, opt, params, names, i, c)
        rng = {"torch": [torch.get_rng_state()], "data": [gens[i].get_state()]}
        save_checkpoint(checkpoint_path(Path(c.out_dir), step), config=c.to_dict(),
                        model_config=mconf, model=model, optimizer=own, step=step, rng=rng,
                        extra={"elapsed_s": elapsed[i], "val_loss": val[i], "world_size": 1,
                               "data_dir": str(Path(data_dir).resolve()), "ensemble_of": len(cfgs),
                               "git_sha": git_sha(), "code": loaded_code()})


def _load_stacked_optimizer(opt, params, names, members, states, cfg) -> None:
    """The stacked optimizer state from each member's checkpoint (train()'s format)."""
    per_member = []
    for m, st in zip(members, states):
        own = m.configure_optimizer(cfg.weight_decay, cfg.lr, (cfg.beta1, cfg.beta2), "cpu",
                                    cfg.optimizer, cfg.momentum)
        own.load_state_dict(st["optimizer"])
        by_name = dict(m.named_parameters())
        per_member.append({n: own.state.get(by_name[n], {}) for n in names})
    for n in names:
        keys = per_member[0][n].keys()
        if not keys:
            continue
        opt.state[params[n]] = {
            k: (torch.stack([pm[n][k] for pm in per_member]).to(params[n].device)
                if per_member[0][n][k].dim() > 0 else per_member[0][n][k].clone())
            for k in keys}


def ensemble_groups(runs: list[tuple[str, str, int]], size: int) -> list[list[tuple[str, str, int]]]:
    """Runs of the same profile and variant in groups of at most `size` (seeds in order)."""
    if size < 1:
        raise ConfigError(f"ensemble size must be >= 1, got {size}")
    groups: dict = {}
    for name, v, s in runs:
        groups.setdefault((name, v), []).append((name, v, s))
    out = []
    for members in groups.values():
        out += [members[i:i + size] for i in range(0, len(members), size)]
    return out
