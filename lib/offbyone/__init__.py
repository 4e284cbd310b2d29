"""offbyone: does Miller's softmax1 ("Attention Is Off By One") remove outliers and sinks?

Modules, one job each:
    attention    softmax1, the learned sink and the rivals: reference and fused attention paths
    model        the GPT (GPTConfig declares every model option) with named hook points
    corpora/     where text comes from: one reader and splitter; Shakespeare, local, hf, testbed
    tokenizer    character and byte-level BPE tokenizers
    tokens       prepared token folders: encode a corpus, TokenData and its batches
    data         prepare(corpus): picks the source, tokenizes once, caches; the data CLI
    config       TrainConfig and the one strict reader of configurations and overrides
    train        the training loop (train, train_step), its CLI, DDP under torchrun
    checkpoint   weights_only checkpoints with their full config
    io           atomic writers for every file the package writes
    device       device choice and autocast
    metrics      kurtosis, inf-norm, attention sinks, losses
    quant        simulated post-training quantization
    measure      measure(checkpoint): every metric of a checkpoint into one JSON
    pipeline     profiles, run folders, the notebook runner and parameter checks
    report/      results to paper: tables, statistics, prose, LaTeX, figures, the report's sections
    bench        attention and training benchmarks
    gpu_check    make gpu-check: CUDA tests, benchmarks and the gpu profile's estimate
    provenance   where a result came from (commit, versions, device, time)
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
