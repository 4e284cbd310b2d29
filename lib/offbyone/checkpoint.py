"""Checkpoints: the full run config, model config, weights, optimizer, step and RNG states.

Written atomically (`io.write_torch`) and read with `torch.load(weights_only=True)`, so a
checkpoint can hold tensors, numbers, strings, lists and dicts, and nothing is unpickled.
"""
from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import torch

from .io import write_torch
from .config import gpt_config
from .model import GPT, GPTConfig

CHECKPOINT_FORMAT = "offbyone-checkpoint"
CHECKPOINT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that is missing, truncated, corrupt, foreign or unsafe."""


def save_checkpoint(path, *, config: dict, model_config: GPTConfig, model, optimizer, step: int,
                    rng: dict, extra: dict | None = None) -> None:
    state = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "config": config,
        "model_config": model_config.to_dict(),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "step": step,
        "rng": rng,
        "extra": extra or {},
    }
    write_torch(path, state)  # atomic; a failure raises OSError naming the path


def load_checkpoint(path, map_location="cpu") -> dict:
    """Read and check a checkpoint. Raises CheckpointError naming the file on any problem."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with warnings.catch_warnings():
            # a corrupt file's first byte read as a pickle protocol: the error below says more
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"checkpoint {path} is corrupt or holds objects that are not "
                              f"allowed (refused by weights_only loading): "
                              f"{str(e).splitlines()[0]}") from None
    except Exception as e:  # noqa: BLE001 - corrupt bytes surface as IndexError, KeyError,
        # UnicodeDecodeError, zipfile.BadZipFile, EOFError, RuntimeError... from the unpickler
        msg = str(e).splitlines()[0] if str(e) else ""
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt: "
                              f"{type(e).__name__}: {msg}") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not an offbyone checkpoint")
    if state.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"checkpoint {path} has version {state.get('version')}, "
                              f"this code reads version {CHECKPOINT_VERSION}")
    for key in ("config", "model_config", "model", "step"):
        if key not in state:
            raise CheckpointError(f"checkpoint {path} lacks {key!r}")
    return state


def describe_history(state: dict) -> str:
    """Where a checkpoint's weights came from, in words ('' for a model trained from scratch)."""
    steps = [f"{h.get('attention', '?')} checkpoint {h.get('checkpoint', '?')} (step "
             f"{h.get('step', '?')}, commit {str(h.get('commit') or 'not recorded')[:10]})"
             for h in (state.get("config") or {}).get("history") or []]
    return ("converted from " + ", itself converted from ".join(reversed(steps))) if steps else ""


def load_model(path, map_location="cpu", attention: str | None = None) -> tuple[GPT, dict]:
    """The GPT of a checkpoint, in eval mode, and the checkpoint dict. With `attention`, a
    checkpoint of another variant is refused (a retrofitted one's weights load into either
    variant without complaint, and would compute something else)."""
    state = load_checkpoint(path, map_location)
    own = state["model_config"].get("attention")
    if attention is not None and attention != own:
        history = describe_history(state)
        raise CheckpointError(f"checkpoint {path} is a {own} model"
                              + (f" ({history})" if history else "")
                              + f"; it cannot be loaded as {attention}. Load it as {own}.")
    try:
        model = GPT(gpt_config(state["model_config"]))
        model.load_state_dict(state["model"])
    except (ValueError, RuntimeError, TypeError) as e:
        raise CheckpointError(f"checkpoint {path} does not match the model: {e}") from None
    return model.eval(), state


# model options a conversion may change: the variant, and how its own new parameters start
CONVERTIBLE_KEYS = ("attention", "attention_impl", "sink_init", "clip_alpha", "gate_init")


def convert_state(state: dict, model: GPT, path="checkpoint") -> dict:
    """A checkpoint's weights made into a state dict for `model`, a GPT of another attention
    variant of the same architecture (a retrofit: softmax -> softmax1, or -> a learned sink
    initialised at model.config.sink_init). Only parameters may be added (the target variant's
    own, which keep their initial value); a different architecture, or a conversion that would
    drop trained parameters, is refused by name."""
    src = state["model_config"]
    dst = model.config.to_dict()
    diff = [k for k in dst if k not in CONVERTIBLE_KEYS and src.get(k) != dst[k]]
    if diff:
        raise CheckpointError(f"{path} cannot start a {dst['attention']} run: its model differs "
                              f"in {', '.join(f'{k} ({src.get(k)!r} there, {dst[k]!r} here)' for k in diff)}; "
                              f"only {', '.join(CONVERTIBLE_KEYS)} may change")
    own = model.state_dict()
    dropped = [k for k in state["model"] if k not in own]
    if dropped:
        raise CheckpointError(f"converting {path} ({src['attention']}) to {dst['attention']} "
                              f"would drop its trained parameters {', '.join(dropped)}; a "
                              f"conversion may only add parameters")
    out = dict(own)
    for k, v in state["model"].items():
        if v.shape != own[k].shape:
            raise CheckpointError(f"{path}: parameter {k} has shape {tuple(v.shape)}, the "
                                  f"{dst['attention']} model's has {tuple(own[k].shape)}")
        out[k] = v
    return out
