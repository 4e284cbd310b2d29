"""Any local UTF-8 text file, or a folder of *.txt files, streamed (never held in memory)."""
from __future__ import annotations

from pathlib import Path

from .text import CorpusError, Source, count_chars, hash_files, split_documents, stream_file


def local_files(path: Path) -> list[Path]:
    if not path.exists():
        raise CorpusError(f"corpus {path} does not exist; give a UTF-8 text file, a folder of "
                          "*.txt files, 'shakespeare', 'bigram_backcopy' or 'hf:NAME'")
    if path.is_dir():
        files = sorted(path.glob("*.txt"))
        if not files:
            raise CorpusError(f"corpus folder {path} holds no *.txt files")
        return files
    return [path]


def local_info(path: Path) -> dict:
    """What identifies a local corpus: its resolved path and the hash of its files."""
    path = Path(path).expanduser().resolve()
    return {"kind": "local", "path": str(path), "sha256": hash_files(local_files(path))}


def local_source(path: Path, info: dict) -> Source:
    """The files' Source: a first pass validates and counts them, later passes stream them."""
    files = local_files(Path(path))
    sizes = {f.stem: count_chars(f) for f in files}
    docs = {f.stem: (lambda f=f: stream_file(f)) for f in files}
    return split_documents(docs, sizes, info)
