"""The synthetic testbed: Guo et al.'s (2024) Bigram-Backcopy task, generated from a fixed seed.

Tokens follow a random bigram chain, except that after one of a few trigger tokens the next
token copies the token before the trigger. Predicting the chain needs only the current token;
only trigger positions need attention, so heads must learn to "do nothing" elsewhere.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..tokenizer import BOS
from .text import SPLITS

SYNTHETIC = ("bigram_backcopy",)


@dataclass(frozen=True)
class BigramBackcopy:
    """The testbed's generator settings (Guo et al. 2024 use a vocabulary of 64, 3 triggers)."""
    vocab: int = 64                # ordinary tokens plus triggers (BOS comes on top)
    triggers: int = 3
    alpha: float = 0.1             # Dirichlet concentration of each bigram row (peaked rows)
    train_tokens: int = 2_000_000
    heldout_tokens: int = 100_000  # each of val and test
    chains: int = 256              # independent chains per split, generated side by side
    seed: int = 0


def testbed_info(spec: BigramBackcopy) -> dict:
    return {"kind": "synthetic", "generator": "bigram_backcopy", **asdict(spec)}


def bigram_backcopy_tokens(spec: BigramBackcopy, n: int, rng: np.random.Generator,
                           cdf: np.ndarray, triggers: np.ndarray) -> np.ndarray:
    """n tokens: `spec.chains` independent chains of equal length, concatenated. In each chain
    a trigger is always followed by a copy of the (ordinary) token before it, so two triggers
    never meet; the chain starts on an ordinary token."""
    is_trig = np.zeros(spec.vocab, dtype=bool)
    is_trig[triggers] = True
    C = spec.chains
    L = -(-n // C)
    out = np.empty((C, L), dtype=np.int64)
    ordinary = np.flatnonzero(~is_trig)
    out[:, 0] = ordinary[rng.integers(len(ordinary), size=C)]
    for t in range(1, L):
        prev = out[:, t - 1]
        u = rng.random(C)
        nxt = (cdf[prev] < u[:, None]).sum(1)               # inverse-CDF draw per chain
        np.minimum(nxt, spec.vocab - 1, out=nxt)
        if t >= 2:
            copy = is_trig[prev]
            nxt[copy] = out[copy, t - 2]
        out[:, t] = nxt
    return out.reshape(-1)[:n]


def build_bigram_backcopy(out_dir: Path, spec: BigramBackcopy) -> dict:
    """Generate the three splits into out_dir (atomically) as a prepared token folder."""
    from ..tokens import write_prepared

    rng = np.random.default_rng(spec.seed)
    triggers = np.sort(rng.choice(spec.vocab, size=spec.triggers, replace=False))
    probs = rng.dirichlet(np.full(spec.vocab, spec.alpha), size=spec.vocab)
    probs[triggers] = 0.0                  # rows of triggers are never used (the copy rule is)
    cdf = np.cumsum(probs, axis=1)
    cdf[:, -1] = np.maximum(cdf[:, -1], 1.0)
    itos = [(f"T{i:02d}" if i in triggers else f"a{i:02d}") for i in range(spec.vocab)] + [BOS]
    meta = {"tokenizer": "synthetic", "dtype": "uint16", "source": testbed_info(spec),
            "vocab_size": len(itos), "itos": itos, "bos_id": spec.vocab,
            "token_classes": {"trigger": [int(t) for t in triggers]}, "splits": {}}
    sizes = {"train": spec.train_tokens, "val": spec.heldout_tokens, "test": spec.heldout_tokens}

    def fill(tmp: Path):
        for i, split in enumerate(SPLITS):
            split_rng = np.random.default_rng([spec.seed, i + 1])
            ids = bigram_backcopy_tokens(spec, sizes[split], split_rng, cdf, triggers)
            ids = ids.astype(np.uint16)
            ids.tofile(tmp / f"{split}.bin")
            meta["splits"][split] = {"tokens": int(len(ids)), "works": [f"{split} chains"],
                                     "sha256": hashlib.sha256(ids.tobytes()).hexdigest()}

    return write_prepared(out_dir, meta, fill)
