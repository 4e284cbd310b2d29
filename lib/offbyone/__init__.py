"""offbyone: does Miller's softmax1 ("Attention Is Off By One") remove outliers and sinks?

Modules: attention (the math), model (the GPT), data (corpora), config, train, checkpoint.
"""
from .attention import VARIANTS, attention, fast_attention, reference_attention, sink_softmax, softmax1
from .checkpoint import CheckpointError, load_checkpoint, load_model
from .config import ConfigError, TrainConfig
from .corpora import CorpusError
from .data import prepare
from .tokens import TokenData
from .model import GPT, GPTConfig

__version__ = "0.1.0"

__all__ = ["VARIANTS", "attention", "fast_attention", "reference_attention", "sink_softmax",
           "softmax1", "CheckpointError", "load_checkpoint", "load_model", "ConfigError",
           "TrainConfig", "CorpusError", "TokenData", "prepare", "GPT", "GPTConfig"]
