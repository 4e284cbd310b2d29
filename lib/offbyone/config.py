"""Run configuration: one dataclass, read from YAML files and `key=value` overrides.

Every key is checked before any work: unknown keys, wrong types and out-of-range values are
refused with an error naming the key and what is allowed.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import yaml

from .attention import IMPLEMENTATIONS, VARIANTS
from .device import DEVICES, valid_device
from .model import GPTConfig
from .tokenizer import check_tokenizer


class ConfigError(ValueError):
    """A configuration key that is unknown, of the wrong type or out of range."""


@dataclass
class TrainConfig:
    # where
    out_dir: str = "runs/default"
    corpus: str = "shakespeare"       # 'shakespeare', 'bigram_backcopy', a UTF-8 file / folder, hf:NAME
    corpus_fallback: str = ""         # used, with a warning, when `corpus` cannot be reached
    tokenizer: str = "char"           # char, or bpe (byte-level, trained on the training split)
    bpe_vocab_size: int = 4096
    max_tokens: int = 0               # cap on the corpus's training tokens (0: all)
    text_field: str = "text"          # the text column of an hf: dataset
    data_root: str = "data"
    bos: bool = False                 # a beginning-of-sequence token at position 0 of each window
    # model
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 128
    dropout: float = 0.0
    bias: bool = True
    attention: str = "softmax1"
    attention_impl: str = "fast"
    sink_init: float = 0.0
    clip_alpha: float = 4.0           # clipped softmax: gamma = -clip_alpha / T
    gate: str = "none"                # none, gated, outgate: a gate on top of `attention`
    gate_init: float = 0.25           # gated: initial gate value
    outgate_mode: str = "elementwise" # outgate: elementwise or headwise
    # optimisation
    batch_size: int = 32
    max_steps: int = 1500
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0            # 0 disables clipping
    # evaluation, logging, checkpoints
    eval_interval: int = 250
    eval_batches: int = 20
    eval_seed: int = 0                # the fixed validation batches, the same for every run
    log_interval: int = 10
    checkpoint_fractions: tuple = (0.25, 0.5, 1.0)
    # system
    seed: int = 1337
    device: str = "auto"              # auto, cpu, cuda, mps
    compile: bool = False
    threads: int = 0                  # torch intra-op threads on CPU; 0 leaves torch's default
    progress: bool = True

    def __post_init__(self):
        self.validate()

    # ----------------------------------------------------------------------------------------
    def validate(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            setattr(self, f.name, _coerce(f.name, value, _field_type(f)))
        positive = ["n_layer", "n_head", "n_embd", "block_size", "batch_size", "max_steps",
                    "eval_interval", "eval_batches", "log_interval"]
        for k in positive:
            if getattr(self, k) < 1:
                raise ConfigError(f"{k} must be >= 1, got {getattr(self, k)}")
        for k in ("warmup_steps", "threads"):
            if getattr(self, k) < 0:
                raise ConfigError(f"{k} must be >= 0, got {getattr(self, k)}")
        for k in ("lr", "min_lr", "weight_decay", "grad_clip"):
            if getattr(self, k) < 0:
                raise ConfigError(f"{k} must be >= 0, got {getattr(self, k)}")
        if self.lr == 0:
            raise ConfigError("lr must be > 0")
        if self.min_lr > self.lr:
            raise ConfigError(f"min_lr ({self.min_lr}) must not exceed lr ({self.lr})")
        for k in ("beta1", "beta2"):
            if not 0 <= getattr(self, k) < 1:
                raise ConfigError(f"{k} must be in [0, 1), got {getattr(self, k)}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        try:
            check_tokenizer(self.tokenizer, self.bpe_vocab_size)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if self.max_tokens < 0:
            raise ConfigError(f"max_tokens must be >= 0, got {self.max_tokens}")
        if self.attention not in VARIANTS:
            raise ConfigError(f"attention {self.attention!r} is not one of {', '.join(VARIANTS)}")
        if self.attention_impl not in IMPLEMENTATIONS:
            raise ConfigError(f"attention_impl {self.attention_impl!r} is not one of "
                              f"{', '.join(IMPLEMENTATIONS)}")
        try:  # the model's own checks (divisibility, gate combinations, option ranges)
            self.model_config(vocab_size=1)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if not valid_device(self.device):
            raise ConfigError(f"device {self.device!r} is not one of {', '.join(DEVICES)}")
        fr = tuple(float(x) for x in self.checkpoint_fractions)
        if not fr or any(not 0 < x <= 1 for x in fr) or 1.0 not in fr:
            raise ConfigError("checkpoint_fractions must be numbers in (0, 1] and include 1.0, "
                              f"got {list(self.checkpoint_fractions)}")
        self.checkpoint_fractions = tuple(sorted(set(fr)))

    def checkpoint_steps(self) -> list[int]:
        return sorted({max(1, round(f * self.max_steps)) for f in self.checkpoint_fractions})

    def model_config(self, vocab_size: int) -> GPTConfig:
        keys = {f.name for f in fields(GPTConfig)} - {"vocab_size"}
        return GPTConfig(vocab_size=vocab_size, **{k: getattr(self, k) for k in keys})

    def to_dict(self) -> dict:
        d = asdict(self)
        d["checkpoint_fractions"] = list(self.checkpoint_fractions)
        return d

    # ----------------------------------------------------------------------------------------
    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        if not isinstance(d, dict):
            raise ConfigError(f"a configuration must be a mapping of keys to values, got {type(d).__name__}")
        unknown = [k for k in d if k not in cls.keys()]
        if unknown:
            raise ConfigError(f"unknown configuration key(s) {', '.join(map(repr, unknown))}; "
                              f"valid keys: {', '.join(cls.keys())}")
        return cls(**d)

    @classmethod
    def load(cls, path=None, overrides: dict | list[str] | None = None) -> "TrainConfig":
        """Defaults, then a YAML file, then overrides (a dict, or 'key=value' strings)."""
        d: dict = {}
        if path is not None:
            path = Path(path)
            if not path.exists():
                raise ConfigError(f"config file {path} does not exist")
            try:
                loaded = yaml.safe_load(path.read_text()) or {}
            except yaml.YAMLError as e:
                raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
            if not isinstance(loaded, dict):
                raise ConfigError(f"config file {path} must hold a mapping of keys to values")
            d.update(loaded)
        if isinstance(overrides, (list, tuple)):
            overrides = parse_overrides(overrides)
        d.update(overrides or {})
        return cls.from_dict(d)


def parse_overrides(items: list[str]) -> dict:
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        k, v = item.split("=", 1)
        k = k.strip()
        if k not in TrainConfig.keys():
            raise ConfigError(f"unknown configuration key {k!r}; valid keys: "
                              f"{', '.join(TrainConfig.keys())}")
        out[k] = yaml.safe_load(v) if v.strip() else ""
        if k == "checkpoint_fractions" and isinstance(out[k], str):
            out[k] = [yaml.safe_load(x) for x in out[k].split(",")]
    return out


def _field_type(f: dataclasses.Field):
    hints = typing.get_type_hints(TrainConfig)
    return hints[f.name]


def _coerce(name: str, value, typ):
    """Accept a value of the field's type (ints for floats too); refuse anything else."""
    if typ is bool:
        if isinstance(value, bool):
            return value
    elif typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif typ is str:
        if isinstance(value, str):
            return value
    elif typ is tuple:
        if isinstance(value, (list, tuple)) and all(
                isinstance(x, (int, float)) and not isinstance(x, bool) for x in value):
            return tuple(value)
    raise ConfigError(f"{name} must be of type {getattr(typ, '__name__', typ)}, "
                      f"got {value!r} ({type(value).__name__})")
