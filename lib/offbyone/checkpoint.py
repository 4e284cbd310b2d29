"""Checkpoints: the full run config, model config, weights, optimizer, step and RNG states.

Written atomically (temporary file, then rename) and read with `torch.load(weights_only=True)`,
so a checkpoint can hold tensors, numbers, strings, lists and dicts, and nothing is unpickled.
The project's other results files are written atomically by `write_text_atomic` and
`write_json_atomic` here too.
"""
from __future__ import annotations

import json
import os
import pickle
import tempfile
import warnings
from pathlib import Path

import torch

from .model import GPT, GPTConfig

CHECKPOINT_FORMAT = "offbyone-checkpoint"
CHECKPOINT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that is missing, truncated, corrupt, foreign or unsafe."""


def atomic_torch_save(obj, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # disk full, unwritable folder: nothing half-written
        Path(tmp).unlink(missing_ok=True)
        raise OSError(f"could not write checkpoint {path}: {e}") from e
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path, text: str) -> None:
    """Write to a hidden temporary file beside `path`, then rename: never a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(path, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=1))


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
    atomic_torch_save(state, path)


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
        model = GPT(GPTConfig.from_dict(state["model_config"]))
        model.load_state_dict(state["model"])
    except (ValueError, RuntimeError, TypeError) as e:
        raise CheckpointError(f"checkpoint {path} does not match the model: {e}") from None
    return model.eval(), state
