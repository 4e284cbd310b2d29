"""Hugging Face datasets (the optional `hf` extra): `hf:NAME[:CONFIG]` streamed from the Hub, or
`hf:text:GLOB`, `hf:json:GLOB`, `hf:parquet:GLOB`, `hf:csv:GLOB` through datasets' own local
loaders. Documents go to splits by index: 1 in 20 to val, 1 in 20 to test, the rest to train.
"""
from __future__ import annotations

import glob
import os
import socket
from pathlib import Path

from .text import SPLITS, CorpusError, CorpusUnreachable, Source, hash_files, normalize_newlines

HF_LOCAL_LOADERS = ("text", "json", "parquet", "csv")
HF_HOST = "huggingface.co"
HF_TIMEOUT_S = 5.0
HF_EVERY = 20                     # document i: val if i % 20 == 0, test if i % 20 == 1


def parse_hf(corpus: str) -> dict:
    body = corpus[3:]
    if not body:
        raise CorpusError("give a dataset after 'hf:', e.g. hf:roneneldan/TinyStories or "
                          "hf:json:/path/*.jsonl")
    kind, _, rest = body.partition(":")
    if kind in HF_LOCAL_LOADERS and rest:
        files = sorted(glob.glob(os.path.expanduser(rest)))
        if not files:
            raise CorpusError(f"{corpus}: no local files match {rest!r}")
        return {"loader": kind, "files": files}
    name, _, config = body.partition(":")
    return {"loader": "hub", "name": name, "config": config or None}


def hf_info(corpus: str, text_field: str) -> dict:
    """What identifies the dataset (with the hash of local files)."""
    spec = parse_hf(corpus)
    info = {"kind": "hf", "corpus": corpus, "text_field": text_field, **spec}
    if spec["loader"] != "hub":
        info["sha256"] = hash_files([Path(f) for f in spec["files"]])
    return info


def _hub_reachable(timeout: float = HF_TIMEOUT_S) -> str | None:
    """None if the Hub answers, else why not (offline mode or no connection)."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(var, "").strip() not in ("", "0", "false", "False"):
            return f"{var} is set"
    try:
        socket.create_connection((HF_HOST, 443), timeout=timeout).close()
        return None
    except OSError as e:
        return f"cannot reach {HF_HOST} ({e.__class__.__name__}: {e})"


def hf_source(corpus: str, text_field: str, info: dict) -> Source:
    spec = parse_hf(corpus)
    if spec["loader"] == "hub":  # unreachable is unreachable, with or without `datasets`
        why = _hub_reachable()
        if why:
            raise CorpusUnreachable(
                f"Hugging Face dataset {spec['name']!r} cannot be streamed: {why}. Offline "
                "alternatives: 'shakespeare', a local UTF-8 file or folder of *.txt, or local "
                "files through datasets' loaders (hf:text:GLOB, hf:json:GLOB, hf:parquet:GLOB)")
    try:
        import datasets
    except ImportError:
        raise CorpusError(f"{corpus} needs the optional `datasets` package: "
                          "pip install -e '.[hf]'") from None

    def load():
        if spec["loader"] == "hub":
            return datasets.load_dataset(spec["name"], spec["config"], split="train",
                                         streaming=True)
        return datasets.load_dataset(spec["loader"], data_files=spec["files"], split="train",
                                     streaming=True)

    def pieces():
        for i, row in enumerate(load()):
            if text_field not in row:
                raise CorpusError(f"{corpus}: rows have no field {text_field!r}; fields: "
                                  f"{', '.join(row)} (set text_field)")
            text = row[text_field]
            if not isinstance(text, str) or not text:
                continue
            split = "val" if i % HF_EVERY == 0 else "test" if i % HF_EVERY == 1 else "train"
            yield split, normalize_newlines(text) + "\n"
    return Source(info, pieces, {s: [f"documents {s}"] for s in SPLITS}, None)
