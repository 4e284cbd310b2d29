"""Writing files atomically: every file and folder the package writes goes through here.

`atomic_path(path)` yields a hidden temporary path beside `path` and renames it into place only
when the body finishes, so a crash, a full disk or Ctrl-C never leaves a half-written file
(the temporary is removed instead). The writers below are built on it:

    write_text(path, text)      write_json(path, obj)      write_csv(path, dataframe_or_rows)
    write_torch(path, obj)      write_figure(path, fig)    write_dir(path, fill)
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

_UMASK = os.umask(0)
os.umask(_UMASK)

@contextlib.contextmanager
def atomic_path(path, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary path in `path`'s folder; renamed to `path` when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)      # mkstemp's 0600 would hide results from others
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path, obj, indent: int = 1) -> None:
    write_text(path, json.dumps(obj, indent=indent))


def write_csv(path, table) -> None:
    """A pandas DataFrame (or a list of row dicts) as CSV, without the index."""
    import pandas as pd
    df = table if isinstance(table, pd.DataFrame) else pd.DataFrame(table)
    with atomic_path(path, ".csv") as tmp:
        df.to_csv(tmp, index=False)


def write_torch(path, obj) -> None:
    """torch.save, atomically; a failure (disk full, unwritable folder) raises OSError."""
    import torch
    try:
        with atomic_path(path, ".pt") as tmp:
            torch.save(obj, tmp)
    except (RuntimeError, OSError) as e:      # torch reports some write failures as either
        raise OSError(f"could not write {path}: {e}") from e


def write_figure(path, fig, **savefig_kw) -> None:
    """A matplotlib figure, in the format the path's ending names (pdf, png, ...)."""
    path = Path(path)
    with atomic_path(path, path.suffix) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or None,
                    **{"bbox_inches": "tight", **savefig_kw})


def write_dir(path, fill: Callable[[Path], None]) -> None:
    """A whole folder: `fill(tmp)` writes into a fresh temporary folder beside `path`, which
    then replaces `path` (an older folder of that name is removed first)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        fill(tmp)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
