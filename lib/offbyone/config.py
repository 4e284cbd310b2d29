"""Run configuration: TrainConfig, read from YAML files and `key=value` overrides, and the one
strict reader (`from_dict`, `parse_overrides`) every configuration class of the package uses.

Model options are declared once, in `GPTConfig`; a TrainConfig holds one (`cfg.model`) and reads
and writes its keys flat beside its own (`n_layer: 2` in YAML, `cfg.n_layer` in code), so
profiles, checkpoints and overrides name every key the same way. Every key is checked before
any work: unknown keys, wrong types and out-of-range values are refused with an error naming
the key and what is allowed.
"""
from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml

from .device import DEVICES, valid_device
from .model import OPTIMIZERS, GPTConfig
from .quant import DEFAULT_SWEEP, QuantConfig
from .tokenizer import check_tokenizer


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


class ConfigError(ValueError):
    """A configuration key that is unknown, of the wrong type or out of range."""


# --------------------------------------------------------------------------------------------
# The one strict reader

def check_keys(d, valid, what: str = "configuration") -> None:
    """Refuse a non-mapping, or keys outside `valid`, naming the valid ones."""
    if not isinstance(d, dict):
        raise ConfigError(f"a {what} must be a mapping of keys to values, got {type(d).__name__}")
    unknown = [k for k in d if k not in valid]
    if unknown:
        raise ConfigError(f"unknown {what} key{'s' * (len(unknown) > 1)} "
                          f"{', '.join(map(repr, unknown))}; "
                          f"valid keys: {', '.join(valid)}")


def coerce_fields(cls, d: dict) -> dict:
    """d's values as the types `cls` (a dataclass) declares (ints accepted for floats)."""
    hints = typing.get_type_hints(cls)
    return {k: _coerce(k, v, hints[k]) for k, v in d.items()}


def from_dict(cls, d: dict, what: str = "configuration"):
    """A dataclass from a mapping: unknown keys and wrong types are refused by name."""
    check_keys(d, [f.name for f in fields(cls)], what)
    try:
        return cls(**coerce_fields(cls, d))
    except ConfigError:
        raise
    except ValueError as e:
        raise ConfigError(str(e)) from None


def parse_overrides(items: list[str], valid, what: str = "configuration",
                    list_keys=()) -> dict:
    """'key=value' strings as a dict; values are read as YAML, and for `list_keys` a
    comma-separated value is a list ('checkpoint_fractions=0.25,1.0')."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        k, v = item.split("=", 1)
        k = k.strip()
        check_keys({k: None}, valid, what)
        out[k] = yaml.safe_load(v) if v.strip() else ""
        if k in list_keys and isinstance(out[k], str):
            out[k] = [yaml.safe_load(x) for x in out[k].split(",")]
    return out


def gpt_config(d: dict) -> GPTConfig:
    """A GPTConfig from a mapping (a checkpoint's `model_config`), strictly."""
    return from_dict(GPTConfig, d, "model configuration")


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
        if isinstance(value, str):  # YAML 1.1 reads 3e-4 (no dot) as a string, as nanoGPT users write it
            try:
                number = float(value)
            except ValueError:
                number = None
            if number is not None and math.isfinite(number):
                return number
    elif typ is str:
        if isinstance(value, str):
            return value
    elif typ is tuple:
        if isinstance(value, (list, tuple)) and all(
                isinstance(x, (int, float)) and not isinstance(x, bool) for x in value):
            return tuple(value)
    raise ConfigError(f"{name} must be of type {getattr(typ, '__name__', typ)}, "
                      f"got {value!r} ({type(value).__name__})")


# --------------------------------------------------------------------------------------------
# TrainConfig

MODEL_KEYS = tuple(f.name for f in fields(GPTConfig) if f.name != "vocab_size")


@dataclass
class TrainConfig:
    # where
    out_dir: str = "runs/default"
    corpus: str = "shakespeare"       # 'shakespeare', 'bigram_backcopy', a UTF-8 file / folder, hf:NAME
    corpus_fallback: str = ""         # used, with a warning, when `corpus` cannot be reached
    tokenizer: str = "char"           # char, or bpe (byte-level, trained on the training split)
    bpe_vocab_size: int = 4096
    max_tokens: int = 0               # cap on the corpus's training tokens (0: all); the size of a synthetic one
    text_field: str = "text"          # the text column of an hf: dataset
    data_root: str = "data"
    bos: bool = False                 # a beginning-of-sequence token at position 0 of each window
    # the model: GPTConfig's options, as flat keys (its vocab_size comes from the corpus)
    model: GPTConfig = field(default_factory=GPTConfig)
    # optimisation
    batch_size: int = 32
    max_steps: int = 1500
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100
    weight_decay: float = 0.1
    optimizer: str = "adamw"          # adamw, or sgd (with `momentum`; Guo et al.'s control)
    momentum: float = 0.9             # SGD's momentum (unused by AdamW)
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0            # 0 disables clipping
    # the learned sink's own peak learning rate (its own parameter group, on the same warm-up
    # and decay as lr, no weight decay); 0 leaves it in the other non-matrix parameters' group
    # at lr. Variants without a learned sink have no such parameter and ignore it.
    sink_lr: float = 0.0
    # evaluation, logging, checkpoints
    eval_interval: int = 250
    eval_batches: int = 20
    eval_seed: int = 0                # the fixed validation batches, the same for every run
    log_interval: int = 10
    checkpoint_fractions: tuple = (0.25, 0.5, 1.0)   # 0.0 adds a checkpoint before the first step
    # a retrofit: start from this checkpoint's weights, converted to this run's attention
    # variant (checkpoint.convert_state: new parameters, a sink say, keep their initial value),
    # with a fresh optimizer at step 0; the run's checkpoints record it in config["history"]
    init_from: str = ""
    # system
    seed: int = 1337
    device: str = "auto"              # auto, cpu, cuda, cuda:N, mps
    compile: bool = False
    compile_mode: str = "default"     # torch.compile's mode: default, reduce-overhead (CUDA graphs), ...
    threads: int = 0                  # torch intra-op threads on CPU; 0 leaves torch's default
    progress: bool = True

    def __post_init__(self):
        self.validate()

    # model keys read and write through to `model`
    def __getattr__(self, name):
        if name in MODEL_KEYS and "model" in self.__dict__:
            return getattr(self.__dict__["model"], name)
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def __setattr__(self, name, value):
        if name in MODEL_KEYS:
            setattr(self.model, name, value)
        else:
            super().__setattr__(name, value)

    # ----------------------------------------------------------------------------------------
    def validate(self) -> None:
        own = {k: getattr(self, k) for k in self._own_keys()}
        for k, v in coerce_fields(TrainConfig, own).items():
            setattr(self, k, v)
        model = asdict(self.model) if isinstance(self.model, GPTConfig) else self.model
        self.model = from_dict(GPTConfig, model, "model configuration")
        for k in ("batch_size", "max_steps", "eval_interval", "eval_batches", "log_interval"):
            if getattr(self, k) < 1:
                raise ConfigError(f"{k} must be >= 1, got {getattr(self, k)}")
        for k in ("warmup_steps", "threads", "max_tokens", "lr", "min_lr", "weight_decay",
                  "grad_clip", "sink_lr"):
            if getattr(self, k) < 0:
                raise ConfigError(f"{k} must be >= 0, got {getattr(self, k)}")
        if self.lr == 0:
            raise ConfigError("lr must be > 0")
        if self.min_lr > self.lr:
            raise ConfigError(f"min_lr ({self.min_lr}) must not exceed lr ({self.lr})")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer {self.optimizer!r} is not one of {', '.join(OPTIMIZERS)}")
        for k in ("beta1", "beta2", "momentum"):
            if not 0 <= getattr(self, k) < 1:
                raise ConfigError(f"{k} must be in [0, 1), got {getattr(self, k)}")
        try:
            check_tokenizer(self.tokenizer, self.bpe_vocab_size)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if self.compile_mode not in COMPILE_MODES:
            raise ConfigError(f"compile_mode {self.compile_mode!r} is not one of {', '.join(COMPILE_MODES)}")
        if not valid_device(self.device):
            raise ConfigError(f"device {self.device!r} is not one of {', '.join(DEVICES)}")
        fr = tuple(float(x) for x in self.checkpoint_fractions)
        if not fr or any(not 0 <= x <= 1 for x in fr) or 1.0 not in fr:
            raise ConfigError("checkpoint_fractions must be numbers in [0, 1] and include 1.0, "
                              f"got {list(self.checkpoint_fractions)}")
        self.checkpoint_fractions = tuple(sorted(set(fr)))

    def checkpoint_steps(self) -> list[int]:
        """The steps with a checkpoint: 0 only where asked for (fraction 0.0), else at least 1."""
        return sorted({0 if f == 0 else max(1, round(f * self.max_steps))
                       for f in self.checkpoint_fractions})

    def model_config(self, vocab_size: int) -> GPTConfig:
        return dataclasses.replace(self.model, vocab_size=vocab_size)

    def to_dict(self) -> dict:
        """Every key, flat (the model's among the others), as YAML and checkpoints hold them."""
        d = {k: getattr(self, k) for k in self.keys()}
        d["checkpoint_fractions"] = list(self.checkpoint_fractions)
        return d

    # ----------------------------------------------------------------------------------------
    @classmethod
    def _own_keys(cls) -> list[str]:
        return [f.name for f in fields(cls) if f.name != "model"]

    @classmethod
    def keys(cls) -> list[str]:
        own = cls._own_keys()
        at = own.index("bos") + 1
        return own[:at] + list(MODEL_KEYS) + own[at:]

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        check_keys(d, cls.keys())
        own = {k: v for k, v in d.items() if k not in MODEL_KEYS}
        model = {k: v for k, v in d.items() if k in MODEL_KEYS}
        return cls(**own, model=model)

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
            overrides = parse_overrides(overrides, cls.keys(), list_keys=("checkpoint_fractions",))
        d.update(overrides or {})
        return cls.from_dict(d)


# --------------------------------------------------------------------------------------------
# What measure() measures (offbyone.measure), beside what train() trains: profiles check both

@dataclass
class MeasureConfig:
    act_seqs: int = 64           # validation windows for activation and attention statistics
    loss_seqs: int = 256         # validation (and test) windows for losses and quantization
    calib_batches: int = 16      # calibration batches from the training split
    calib_batch_size: int = 32
    bit_widths: tuple = DEFAULT_SWEEP     # the sweep at the final checkpoint
    dose_bit_widths: tuple = ((8, 8), (16, 6))  # at the earlier checkpoints: the primary endpoints'
    setup: str = "fp32_head"     # offbyone.quant.SETUPS: which activations are quantized
    weight_granularity: str = "tensor"
    weight_method: str = "mse"
    act_method: str = "minmax"
    compare_legacy: bool = True  # also W8A8 under the earlier setup (linear_inputs, min-max
                                 # weights), at the final checkpoint
    windows: tuple = (16, 32, 64)  # sliding-window evaluation (final checkpoint): window sizes
    keeps: tuple = (0, 1, 2, 4)    # ... and initial positions kept visible
    seed: int = 0                # the fixed evaluation windows: the same for every checkpoint
    groups: bool = False         # at the final checkpoint, also which quantized tensor costs
                                 # what (measure_groups: <checkpoint>.groups.json)
    groups_seqs: int = 0         # ... on the first this many of the loss windows (0: all of
                                 # them); its 66 quantized evaluations are most of its cost
    threads: int = 0
    device: str = "auto"         # auto (cuda, mps, cpu), or one of them

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name in ("bit_widths", "dose_bit_widths"):
                ok = (isinstance(v, (list, tuple)) and v and all(
                    isinstance(p, (list, tuple)) and len(p) == 2 and
                    all(isinstance(b, int) and 2 <= b <= 16 for b in p) for p in v))
                if not ok:
                    raise ConfigError(f"{f.name} must be a list of [wbits, abits] pairs of "
                                      f"integers from 2 to 16, got {v!r}")
                setattr(self, f.name, tuple(tuple(p) for p in v))
            elif f.name in ("windows", "keeps"):
                lo = 1 if f.name == "windows" else 0
                if not (isinstance(v, (list, tuple)) and all(
                        isinstance(x, int) and not isinstance(x, bool) and x >= lo for x in v)):
                    raise ConfigError(f"{f.name} must be a list of integers >= {lo}, got {v!r}")
                setattr(self, f.name, tuple(v))
            elif f.type in ("bool", bool):
                if not isinstance(v, bool):
                    raise ConfigError(f"{f.name} must be true or false, got {v!r}")
            elif f.type in ("int", int):
                lo = 0 if f.name in ("seed", "threads", "groups_seqs") else 1
                if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                    raise ConfigError(f"{f.name} must be a {'non-negative' if lo == 0 else 'positive'} "
                                      f"integer, got {v!r}")
        if not valid_device(self.device):
            raise ConfigError(f"device {self.device!r} is not one of {', '.join(DEVICES)}")
        try:  # the quantizer options are QuantConfig's: it validates them
            QuantConfig(setup=self.setup, weight_granularity=self.weight_granularity,
                        weight_method=self.weight_method, act_method=self.act_method)
        except ValueError as e:
            raise ConfigError(str(e)) from None

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_dict(cls, d: dict) -> "MeasureConfig":
        check_keys(d, cls.keys(), "measurement")
        return cls(**d)
