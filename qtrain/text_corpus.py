"""Byte-level text corpus from the Python standard library's own source: real text every machine has.

Files are the stdlib's `*.py` (site-packages and test suites excluded), sorted by relative path.
A file goes to validation when crc32(its relative path) % `val_every` == 0, so the split does not
depend on which other files this Python version ships. Tokens are bytes (vocabulary 256).
"""
import os
import sysconfig
import zlib

import torch

VOCAB_SIZE = 256
_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
_SEPARATOR = b"\n\n"


def stdlib_source_files(root=None):
    """Relative paths of the stdlib's `*.py` files, sorted (deterministic on a given install)."""
    root = root or sysconfig.get_paths()["stdlib"]
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS]
        for name in filenames:
            if name.endswith(".py"):
                found.append(os.path.relpath(os.path.join(dirpath, name), root))
    return root, sorted(p.replace(os.sep, "/") for p in found)


class StdlibCorpus:
    """Train/validation byte streams with seedable (B, T+1) windows; inputs are [:, :-1], targets [:, 1:]."""

    def __init__(self, root=None, val_every=10, max_bytes=None):
        root, files = stdlib_source_files(root)
        if not files:
            raise RuntimeError(f"qtrain.text_corpus: no *.py files found under {root!r}")
        train, val = [], []
        n_train = 0
        for rel in files:
            with open(os.path.join(root, rel), "rb") as f:
                data = f.read()
            is_val = zlib.crc32(rel.encode()) % val_every == 0
            if not is_val and max_bytes is not None and n_train >= max_bytes:
                continue
            (val if is_val else train).append(data)
            n_train += 0 if is_val else len(data)
        self.root, self.n_files = root, len(files)
        self.n_val_files = len(val)
        self.train = torch.frombuffer(bytearray(_SEPARATOR.join(train)), dtype=torch.uint8)
        self.val = torch.frombuffer(bytearray(_SEPARATOR.join(val)), dtype=torch.uint8)

    def __repr__(self):
        return (f"StdlibCorpus(root={self.root!r}, files={self.n_files}, val_files={self.n_val_files}, "
                f"train_bytes={self.train.numel()}, val_bytes={self.val.numel()})")

    @staticmethod
    def _windows(stream, starts, seq_len):
        idx = starts[:, None] + torch.arange(seq_len + 1)
        w = stream[idx].long()
        return w[:, :-1], w[:, 1:]

    def train_batches(self, batch_size, seq_len, seed):
        """Endless iterator of (inputs, targets), each (batch_size, seq_len) int64, from random offsets."""
        gen = torch.Generator().manual_seed(seed)
        high = self.train.numel() - seq_len - 1
        while True:
            starts = torch.randint(0, high, (batch_size,), generator=gen)
            yield self._windows(self.train, starts, seq_len)

    def val_batches(self, batch_size, seq_len, n_batches):
        """A fixed list of validation batches: windows evenly spaced over the held-out files."""
        n = batch_size * n_batches
        high = self.val.numel() - seq_len - 1
        starts = torch.linspace(0, high, n).long()
        return [self._windows(self.val, s, seq_len) for s in starts.split(batch_size)]
