"""Training: one function for notebooks, and a CLI over the same code.

    python -m offbyone.train --config configs/train_4l.yaml --set attention=softmax1 seed=2
    torchrun --nproc_per_node 2 -m offbyone.train --config ... # data parallel (DDP)

AdamW (decay on matrices only), linear warmup then cosine decay, gradient clipping, periodic
evaluation on fixed validation batches, a JSONL log, atomic checkpoints at fractions of training,
and exact resume: a run killed part way and started again with the same config continues from its
latest checkpoint and, on CPU, ends with bit-identical weights.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import ConfigError, TrainConfig
from .corpora import CorpusError
from .data import prepare_for
from .device import DeviceError, autocast_for, pick_device
from .io import write_json
from .model import GPT
from .tokens import TokenData

# Keys that do not change what is computed: a run may resume with them changed.
RESUME_FREE_KEYS = {"out_dir", "data_root", "device", "compile", "threads", "progress"}


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup over warmup_steps, then cosine decay from lr to min_lr at max_steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / (cfg.warmup_steps + 1)
    span = max(1, cfg.max_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


def checkpoint_path(out_dir: Path, step: int) -> Path:
    return Path(out_dir) / f"ckpt_{step:06d}.pt"


def list_checkpoints(out_dir) -> list[Path]:
    return sorted(Path(out_dir).glob("ckpt_[0-9][0-9][0-9][0-9][0-9][0-9].pt"))


@torch.no_grad()
def evaluate(model, batches, device, autocast) -> float:
    was_training = model.training
    model.eval()
    losses = []
    for x, y in batches:
        with autocast:
            _, loss = model(x.to(device), y.to(device))
        losses.append(loss.item())
    model.train(was_training)
    return sum(losses) / len(losses)


def _distributed() -> tuple[int, int, int]:
    """(rank, world_size, local_rank); starts the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    return dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0"))


def _gather(obj, world: int) -> list:
    if world == 1:
        return [obj]
    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


def _check_resumable(state: dict, cfg: TrainConfig, path: Path) -> None:
    old, new = state["config"], cfg.to_dict()
    # a key the checkpoint lacks was added to the code later: it ran with that key's default
    defaults = TrainConfig().to_dict()
    diff = [k for k in new if k not in RESUME_FREE_KEYS and old.get(k, defaults[k]) != new[k]]
    if diff:
        k = diff[0]
        raise ConfigError(f"{cfg.out_dir} holds a run with a different configuration "
                          f"({k}: {old.get(k)!r} there, {new[k]!r} now; checkpoint {path}). "
                          "Use another out_dir, or delete that run.")


def train(cfg: TrainConfig | dict, on_step=None) -> dict:
    """Train (or resume, or skip if finished) the run `cfg` describes. Returns a summary dict.

    `on_step(step)` is called after every completed optimisation step (tests use it to
    interrupt a run)."""
    if isinstance(cfg, dict):
        cfg = TrainConfig.from_dict(cfg)
    rank, world, local_rank = _distributed()
    master = rank == 0
    device = pick_device(cfg.device, local_rank)
    if cfg.threads and device.type == "cpu":
        torch.set_num_threads(cfg.threads)
    out_dir = Path(cfg.out_dir)
    summary_path = out_dir / "train_summary.json"

    # one trainer per run folder: a second one (say, from a restarted `make` while a killed
    # one's kernel still runs) waits for the first, then resumes from what it left
    lock = _lock_run(out_dir) if master else None
    try:
        return _train(cfg, on_step, rank, world, local_rank, master, device, out_dir, summary_path)
    finally:
        if lock is not None:
            lock.close()


def _lock_run(out_dir: Path):
    import fcntl
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        f = open(out_dir / ".lock", "w")
    except OSError as e:
        raise OSError(f"cannot write to the run folder {out_dir}: {e}") from e
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"{out_dir}: another process is training this run; waiting for it", flush=True)
        fcntl.flock(f, fcntl.LOCK_EX)
    return f


def _train(cfg, on_step, rank, world, local_rank, master, device, out_dir, summary_path):
    # data (prepared once, by the first process)
    if master:
        data_dir = prepare_for(cfg)
    if world > 1:
        dist.barrier()
        data_dir = prepare_for(cfg)
    data = TokenData(data_dir)

    # resume from the latest checkpoint, if any
    ckpts = list_checkpoints(out_dir)
    state = load_checkpoint(ckpts[-1]) if ckpts else None
    if state is not None:
        _check_resumable(state, cfg, ckpts[-1])
        if state["step"] >= cfg.max_steps and summary_path.exists():
            if master:
                print(f"{out_dir}: already trained to step {state['step']}; nothing to do")
            return json.loads(summary_path.read_text())

    torch.manual_seed(cfg.seed)
    mconf = cfg.model_config(data.vocab_size)
    model = GPT(mconf).to(device)
    optimizer = model.configure_optimizer(cfg.weight_decay, cfg.lr, (cfg.beta1, cfg.beta2),
                                          device.type)
    data_gen = torch.Generator().manual_seed(cfg.seed + 1_000_003 * rank)
    start, elapsed, val_loss = 0, 0.0, None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start = state["step"]
        elapsed = state["extra"].get("elapsed_s", 0.0)
        val_loss = state["extra"].get("val_loss")
        rng = state["rng"]
        if len(rng["data"]) != world:
            raise ConfigError(f"checkpoint {ckpts[-1]} was written by {len(rng['data'])} "
                              f"process(es); resume it with as many, not {world}")
        torch.set_rng_state(rng["torch"][rank])
        data_gen.set_state(rng["data"][rank])
        if device.type == "cuda" and rng.get("cuda"):
            torch.cuda.set_rng_state(rng["cuda"][rank], device)

    raw_model = model
    if cfg.compile:
        model = torch.compile(model)
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP
        model = DDP(model, device_ids=[local_rank] if device.type == "cuda" else None)
    autocast = autocast_for(device)

    eval_gen = torch.Generator().manual_seed(cfg.eval_seed)
    eval_batches = [data.get_batch("val", cfg.batch_size, cfg.block_size, eval_gen, cfg.bos)
                    for _ in range(cfg.eval_batches)]

    log_path = out_dir / "log.jsonl"
    if master:
        out_dir.mkdir(parents=True, exist_ok=True)
        # drop log lines past the checkpoint we resume from, so the log matches the weights
        lines = log_path.read_text().splitlines() if log_path.exists() else []
        kept = [l for l in lines if l.strip() and json.loads(l).get("step", 0) <= start]
        log_path.write_text("".join(l + "\n" for l in kept))
    log = open(log_path, "a") if master else None

    def write_log(rec):
        if log is not None:
            log.write(json.dumps(rec) + "\n")
            log.flush()

    ckpt_steps = set(cfg.checkpoint_steps())
    tokens_per_step = cfg.batch_size * cfg.block_size * world
    last_ckpt = ckpts[-1] if ckpts else None
    if start == 0:
        val_loss = evaluate(raw_model, eval_batches, device, autocast)
        write_log({"step": 0, "val_loss": val_loss, "elapsed_s": 0.0})
    # in a terminal the bar redraws in place; in logs (papermill, CI) a line every 10 s is enough
    bar = tqdm(total=cfg.max_steps, initial=start, disable=not (master and cfg.progress),
               desc=f"{cfg.attention} seed {cfg.seed}", unit="step", dynamic_ncols=True,
               mininterval=0.5 if sys.stderr.isatty() else 10.0)
    model.train()
    t_last, tokens_since, loss_acc, n_acc = time.perf_counter(), 0, 0.0, 0
    tokens_per_s = None
    for step in range(start, cfg.max_steps):
        t0 = time.perf_counter()
        lr = lr_at(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, y = data.get_batch("train", cfg.batch_size, cfg.block_size, data_gen, cfg.bos)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast:
            _, loss = model(x, y)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"training loss is {loss.item()} at step {step + 1} (attention {cfg.attention}, "
                f"seed {cfg.seed}); stopped. Last good checkpoint: {last_ckpt or 'none'}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        done = step + 1
        elapsed += time.perf_counter() - t0
        loss_acc += loss.item()
        n_acc += 1
        tokens_since += tokens_per_step
        rec = {}
        if done % cfg.log_interval == 0 or done == cfg.max_steps:
            now = time.perf_counter()
            tokens_per_s = tokens_since / max(now - t_last, 1e-9)
            rec.update(train_loss=loss_acc / n_acc, lr=lr, tokens_per_s=tokens_per_s)
            t_last, tokens_since, loss_acc, n_acc = now, 0, 0.0, 0
            bar.set_postfix(loss=f"{rec['train_loss']:.3f}", tok_s=f"{tokens_per_s:,.0f}")
        if done % cfg.eval_interval == 0 or done == cfg.max_steps:
            val_loss = evaluate(raw_model, eval_batches, device, autocast)
            rec["val_loss"] = val_loss
            t_last = time.perf_counter()  # evaluation time is not training throughput
        if rec:
            write_log({"step": done, **rec, "elapsed_s": elapsed})
        if done in ckpt_steps:
            rng = {"torch": _gather(torch.get_rng_state(), world),
                   "data": _gather(data_gen.get_state(), world)}
            if device.type == "cuda":
                rng["cuda"] = _gather(torch.cuda.get_rng_state(device).cpu(), world)
            last_ckpt = checkpoint_path(out_dir, done)
            if master:
                save_checkpoint(last_ckpt, config=cfg.to_dict(), model_config=mconf,
                                model=raw_model, optimizer=optimizer, step=done, rng=rng,
                                extra={"elapsed_s": elapsed, "val_loss": val_loss,
                                       "world_size": world,
                                       "data_dir": str(Path(data_dir).resolve())})
            if world > 1:
                dist.barrier()
        bar.update(1)
        if on_step is not None:
            on_step(done)
    bar.close()

    summary = {"out_dir": str(out_dir), "attention": cfg.attention, "seed": cfg.seed,
               "steps": cfg.max_steps, "final_checkpoint": str(checkpoint_path(out_dir, cfg.max_steps)),
               "val_loss": val_loss, "tokens_per_s": tokens_per_s, "train_elapsed_s": elapsed,
               "world_size": world, "device": str(device), "n_params": raw_model.num_params()}
    if world > 1:
        flat = torch.cat([p.detach().float().flatten().cpu() for p in raw_model.parameters()])
        summary["ddp_params_agree"] = all(torch.equal(flat, other)
                                          for other in _gather(flat, world))
    if master:
        write_log({"step": cfg.max_steps, "event": "done", **summary})
        write_json(summary_path, summary)
        log.close()
    return summary


def main(argv=None):
    ap = argparse.ArgumentParser(description="Train a GPT of one attention variant.")
    ap.add_argument("--config", help="a YAML file of TrainConfig keys")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help=f"overrides; keys: {', '.join(TrainConfig.keys())}")
    args = ap.parse_args(argv)
    distributed = False
    try:
        cfg = TrainConfig.load(args.config, args.set)
        summary = train(cfg)
    except (ConfigError, CorpusError, CheckpointError, DeviceError, FloatingPointError, OSError) as e:
        sys.exit(f"error: {e}")
    finally:
        if dist.is_initialized():
            distributed = True
            # free the DDP model (and its reducer's pending gloo work) while the interpreter is
            # fully alive: left to interpreter shutdown, gloo threads can abort the process
            gc.collect()
            dist.destroy_process_group()
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary, indent=1))
    if distributed:
        # Every output is written (atomically) and closed. Skip interpreter finalisation, where
        # gloo's threads can still hold tensors and abort both ranks with "terminate called
        # without an active exception" (seen about once in 15 test-suite runs; pytorch/pytorch
        # PR 179291 describes the mechanism): a finished run exits 0.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


if __name__ == "__main__":
    main()
