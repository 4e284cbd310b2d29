import random

import pytest
import torch

torch.set_num_threads(2)


def make_text(n_chars: int = 60_000, seed: int = 0) -> str:
    """A small deterministic English-like text with punctuation and line breaks."""
    rng = random.Random(seed)
    words = ("the king and queen of a fair land spoke to their lords , and all the court "
             "was still . what say you ? my lord , i say nothing ; let them go !").split()
    out, n = [], 0
    while n < n_chars:
        line = " ".join(rng.choice(words) for _ in range(rng.randint(3, 12)))
        out.append(line.capitalize())
        n += len(line) + 1
    return "\n".join(out) + "\n"


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "tiny.txt"
    path.write_text(make_text())
    return path


@pytest.fixture(scope="session")
def tiny_data(tiny_corpus, tmp_path_factory):
    from offbyone.data import prepare
    root = tmp_path_factory.mktemp("data")
    return prepare(str(tiny_corpus), root, verbose=False)


def tiny_train_config(tmp_path, tiny_corpus, data_root, **kw):
    """2 layers, 32 wide, 16 tokens: the tests' model."""
    from offbyone.config import TrainConfig
    base = dict(out_dir=str(tmp_path / "run"), corpus=str(tiny_corpus), data_root=str(data_root),
                n_layer=2, n_head=2, n_embd=32, block_size=16, batch_size=8, max_steps=12,
                warmup_steps=2, lr=3e-3, min_lr=3e-4, eval_interval=6, eval_batches=2,
                log_interval=3, checkpoint_fractions=[0.5, 1.0], progress=False, dropout=0.1,
                attention="softmax1")
    base.update(kw)
    return TrainConfig.from_dict(base)
