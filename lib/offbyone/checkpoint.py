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


def load_model(path, map_location="cpu") -> tuple[GPT, dict]:
    """The GPT of a checkpoint, in eval mode, and the checkpoint dict."""
    state = load_checkpoint(path, map_location)
    try:
        model = GPT(gpt_config(state["model_config"]))
        model.load_state_dict(state["model"])
    except (ValueError, RuntimeError, TypeError) as e:
        raise CheckpointError(f"checkpoint {path} does not match the model: {e}") from None
    return model.eval(), state
