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
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from .checkpoint import CheckpointError, convert_state, load_checkpoint, save_checkpoint
from .config import ConfigError, TrainConfig
from .corpora import CorpusError
from .data import prepare_for
from .device import DeviceError, autocast_for, pick_device
from .io import write_json, write_text
from .metrics import residual_peak
from .model import GPT
from .provenance import git_sha, loaded_code
from .tokens import TokenData

# Keys that do not change what is computed: a run may resume with them changed.
# attention_impl: the fused and the materialising paths compute the same attention (to float
# rounding); an ensemble (offbyone.ensemble) trains with the latter
RESUME_FREE_KEYS = {"out_dir", "data_root", "device", "compile", "compile_mode", "threads",
                    "progress", "attention_impl"}


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


def _peak_record(model, batches, device, bos: bool) -> dict:
    """Guo et al.'s BOS residual peak on the first evaluation batch, per layer (embedding, then
    each block): the BOS L2 norm and its ratio to the median other position. Logged at every
    evaluation of a run with a BOS token, so that log.jsonl traces its growth with steps."""
    if not bos:
        return {}
    peak = residual_peak(model, batches[0][0].to(device))
    return {"bos_norm": [round(r["first_norm"], 4) for r in peak["layers"]],
            "bos_ratio": [round(r["ratio"], 4) for r in peak["layers"]]}


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
    run = _Run(cfg, rank, world, pick_device(cfg.device, local_rank))
    if cfg.threads and run.device.type == "cpu":
        torch.set_num_threads(cfg.threads)
    # one trainer per run folder: a second one (say, from a restarted `make` while a killed
    # one's kernel still runs) waits for the first, then resumes from what it left
    lock = _lock_run(run.out_dir) if run.master else None
    try:
        return _train(cfg, run, on_step)
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


def train_step(model, optimizer, x, y, grad_clip: float, autocast, lap=None) -> torch.Tensor:
    """One optimisation step on a batch: forward, backward, clip, update. Returns the loss.

    Raises FloatingPointError on a non-finite loss, before any weight changes. `lap(part)`, if
    given, is called after the forward, the backward and the update (the benchmark times the
    parts with it)."""
    with autocast:
        _, loss = model(x, y)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"training loss is {loss.item()}")
    lap = lap or (lambda part: None)
    lap("forward")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    lap("backward")
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    lap("optimizer")
    return loss


def _train(cfg: TrainConfig, run: "_Run", on_step) -> dict:
    """The loop. Resume, the log, throughput, checkpoints and the summary are helpers below."""
    data = TokenData(run.prepare_data())
    ckpts = list_checkpoints(run.out_dir)
    state = load_checkpoint(ckpts[-1]) if ckpts else None
    if state is not None:
        _check_resumable(state, cfg, ckpts[-1])
        if state["step"] >= cfg.max_steps and run.summary_path.exists():
            if run.master:
                print(f"{run.out_dir}: already trained to step {state['step']}; nothing to do")
            return json.loads(run.summary_path.read_text())
    model, optimizer, gen, start, val_loss = run.build(data, state, ckpts[-1] if ckpts else None)
    eval_gen = torch.Generator().manual_seed(cfg.eval_seed)
    eval_batches = [data.get_batch("val", cfg.batch_size, cfg.block_size, eval_gen, cfg.bos)
                    for _ in range(cfg.eval_batches)]
    log = _RunLog(run.out_dir / "log.jsonl", start, run.master)
    if start == 0:
        val_loss = evaluate(run.raw_model, eval_batches, run.device, run.autocast)
        log.write({"step": 0, "val_loss": val_loss,
                   **_peak_record(run.raw_model, eval_batches, run.device, cfg.bos),
                   "elapsed_s": 0.0})
        if 0 in cfg.checkpoint_steps():        # the model before training (a retrofit's source)
            run.save(0, optimizer, gen, val_loss)
    bar, meter = _progress_bar(cfg, start, run.master), _Meter(cfg.batch_size * cfg.block_size * run.world)
    last_ckpt, ckpt_steps = (ckpts[-1] if ckpts else None), set(cfg.checkpoint_steps())
    model.train()
    for step in range(start, cfg.max_steps):
        t0 = time.perf_counter()
        lr = _set_lr(optimizer, lr_at(step, cfg))
        x, y = data.get_batch("train", cfg.batch_size, cfg.block_size, gen, cfg.bos)
        x, y = x.to(run.device, non_blocking=True), y.to(run.device, non_blocking=True)
        try:
            loss = train_step(model, optimizer, x, y, cfg.grad_clip, run.autocast)
        except FloatingPointError as e:
            raise FloatingPointError(f"{e} at step {step + 1} (attention {cfg.attention}, seed "
                                     f"{cfg.seed}); stopped. Last good checkpoint: "
                                     f"{last_ckpt or 'none'}") from None
        done = step + 1
        run.elapsed += time.perf_counter() - t0
        logging = done % cfg.log_interval == 0 or done == cfg.max_steps
        rec = meter.add(loss.item(), lr if logging else None, bar)
        if done % cfg.eval_interval == 0 or done == cfg.max_steps:
            rec["val_loss"] = val_loss = evaluate(run.raw_model, eval_batches, run.device, run.autocast)
            rec.update(_peak_record(run.raw_model, eval_batches, run.device, cfg.bos))
            meter.skip_time()                  # evaluation time is not training throughput
        if rec:
            log.write({"step": done, **rec, "elapsed_s": run.elapsed})
        if done in ckpt_steps:
            last_ckpt = run.save(done, optimizer, gen, val_loss)
        bar.update(1)
        if on_step is not None:
            on_step(done)
    bar.close()
    summary = run.summary(val_loss, meter.tokens_per_s)
    if run.master:
        log.write({"step": cfg.max_steps, "event": "done", **summary})
        write_json(run.summary_path, summary)
    log.close()
    return summary


def _set_lr(optimizer, lr: float) -> float:
    """Every group's learning rate to lr (times its lr_scale: the learned sink's own, sink_lr)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    return lr


def _progress_bar(cfg: TrainConfig, start: int, master: bool):
    # in a terminal the bar redraws in place; in logs (papermill, CI) a line every 10 s is enough
    return tqdm(total=cfg.max_steps, initial=start, disable=not (master and cfg.progress),
                desc=f"{cfg.attention} seed {cfg.seed}", unit="step", dynamic_ncols=True,
                mininterval=0.5 if sys.stderr.isatty() else 10.0)


class _Meter:
    """Training loss and tokens/s averaged over the steps since the last log line."""

    def __init__(self, tokens_per_step: int):
        self.tokens_per_step, self.tokens_per_s = tokens_per_step, None
        self.restart()
        self.loss, self.n = 0.0, 0

    def restart(self) -> None:
        self.t_last, self.tokens = time.perf_counter(), 0

    def skip_time(self) -> None:
        self.t_last = time.perf_counter()

    def add(self, loss: float, lr: float | None = None, bar=None) -> dict:
        """Count one step; with `lr` (a logging step) return the log record and start over."""
        self.loss, self.n, self.tokens = self.loss + loss, self.n + 1, self.tokens + self.tokens_per_step
        if lr is None:
            return {}
        self.tokens_per_s = self.tokens / max(time.perf_counter() - self.t_last, 1e-9)
        rec = {"train_loss": self.loss / self.n, "lr": lr, "tokens_per_s": self.tokens_per_s}
        self.restart()
        self.loss, self.n = 0.0, 0
        bar.set_postfix(loss=f"{rec['train_loss']:.3f}", tok_s=f"{self.tokens_per_s:,.0f}")
        return rec


class _RunLog:
    """log.jsonl of a run: on resume, lines past the checkpoint resumed from are dropped, so
    the log matches the weights. Only the master process writes."""

    def __init__(self, path: Path, start: int, master: bool):
        self.file = None
        if master:
            path.parent.mkdir(parents=True, exist_ok=True)
            lines = path.read_text().splitlines() if path.exists() else []
            kept = [l for l in lines if l.strip() and json.loads(l).get("step", 0) <= start]
            write_text(path, "".join(l + "\n" for l in kept))
            self.file = open(path, "a")

    def write(self, rec: dict) -> None:
        if self.file is not None:
            self.file.write(json.dumps(rec) + "\n")
            self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


class _Run:
    """One training process's place in a run: its rank, device, folder, model and clock."""

    def __init__(self, cfg: TrainConfig, rank: int, world: int, device: torch.device):
        self.cfg, self.rank, self.world, self.device = cfg, rank, world, device
        self.master = rank == 0
        self.out_dir = Path(cfg.out_dir)
        self.summary_path = self.out_dir / "train_summary.json"
        self.autocast = autocast_for(device)
        self.elapsed = 0.0
        self.history: list[dict] = []   # where the weights came from (a retrofit's source)

    def prepare_data(self) -> Path:
        """The corpus, prepared once (by the first process; the others wait, then find it)."""
        if self.master:
            self.data_dir = prepare_for(self.cfg)
        if self.world > 1:
            dist.barrier()
            self.data_dir = prepare_for(self.cfg)
        return self.data_dir

    def build(self, data: TokenData, state: dict | None, path: Path | None):
        """(model to train, optimizer, data generator, first step, last val loss): fresh, or
        restored exactly from a checkpoint's weights, optimizer and RNG states."""
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        self.mconf = cfg.model_config(data.vocab_size)
        self.raw_model = model = GPT(self.mconf).to(self.device)
        optimizer = model.configure_optimizer(cfg.weight_decay, cfg.lr, (cfg.beta1, cfg.beta2),
                                              self.device.type, cfg.optimizer, cfg.momentum,
                                              cfg.sink_lr)
        gen = torch.Generator().manual_seed(cfg.seed + 1_000_003 * self.rank)
        start, val_loss = 0, None
        if state is None and cfg.init_from:
            self._start_from(model, cfg.init_from)
        if state is not None:
            self.history = list(state["config"].get("history") or [])
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            start, self.elapsed = state["step"], state["extra"].get("elapsed_s", 0.0)
            val_loss = state["extra"].get("val_loss")
            self._restore_rng(state["rng"], gen, path)
        if cfg.compile:   # reduce-overhead: CUDA graphs, for launch-bound small models
            model = torch.compile(model, mode=None if cfg.compile_mode == "default" else cfg.compile_mode)
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP
            model = DDP(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        return model, optimizer, gen, start, val_loss

    def _start_from(self, model: GPT, path: str) -> None:
        """A retrofit: the weights of checkpoint `path` converted to this run's variant; its
        history (and its own, if it was converted too) goes into every checkpoint's config."""
        src = load_checkpoint(path)
        model.load_state_dict(convert_state(src, model, path))
        self.history = list(src["config"].get("history") or []) + [{
            "checkpoint": str(path), "attention": src["model_config"]["attention"],
            "step": src["step"], "seed": src["config"].get("seed"),
            "commit": src["extra"].get("git_sha") or "",
            "sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest()}]
        if self.master:
            print(f"{self.cfg.out_dir}: starting from {path} ({src['model_config']['attention']}, "
                  f"step {src['step']}) as {self.cfg.attention}")

    def _restore_rng(self, rng: dict, gen: torch.Generator, path: Path) -> None:
        if len(rng["data"]) != self.world:
            raise ConfigError(f"checkpoint {path} was written by {len(rng['data'])} "
                              f"process(es); resume it with as many, not {self.world}")
        torch.set_rng_state(rng["torch"][self.rank])
        gen.set_state(rng["data"][self.rank])
        if self.device.type == "cuda" and rng.get("cuda"):
            torch.cuda.set_rng_state(rng["cuda"][self.rank], self.device)

    def save(self, step: int, optimizer, gen: torch.Generator, val_loss) -> Path:
        """A checkpoint of every process's RNG states (the master writes it); returns its path."""
        rng = {"torch": _gather(torch.get_rng_state(), self.world),
               "data": _gather(gen.get_state(), self.world)}
        if self.device.type == "cuda":
            rng["cuda"] = _gather(torch.cuda.get_rng_state(self.device).cpu(), self.world)
        path = checkpoint_path(self.out_dir, step)
        if self.master:
            # a retrofit's checkpoints carry where their weights came from
            config = {**self.cfg.to_dict(), **({"history": self.history} if self.history else {})}
            save_checkpoint(path, config=config, model_config=self.mconf,
                            model=self.raw_model, optimizer=optimizer, step=step, rng=rng,
                            extra={"elapsed_s": self.elapsed, "val_loss": val_loss,
                                   "world_size": self.world, "git_sha": git_sha(),
                                   "code": loaded_code(),
                                   "data_dir": str(Path(self.data_dir).resolve())})
        if self.world > 1:
            dist.barrier()
        return path

    def summary(self, val_loss, tokens_per_s) -> dict:
        cfg = self.cfg
        out = {"out_dir": str(self.out_dir), "attention": cfg.attention, "seed": cfg.seed,
               "steps": cfg.max_steps,
               "final_checkpoint": str(checkpoint_path(self.out_dir, cfg.max_steps)),
               "val_loss": val_loss, "tokens_per_s": tokens_per_s,
               "train_elapsed_s": self.elapsed, "world_size": self.world,
               "device": str(self.device), "n_params": self.raw_model.num_params()}
        if self.world > 1:
            flat = torch.cat([p.detach().float().flatten().cpu() for p in self.raw_model.parameters()])
            out["ddp_params_agree"] = all(torch.equal(flat, other)
                                          for other in _gather(flat, self.world))
        return out


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
