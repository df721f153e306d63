import numpy as np
import pytest


def _first_mismatch_report(actual, expected, what):
    """Mismatch count plus the first bad element as value and as hex bits (STYLE: tests)."""
    bad = np.flatnonzero(actual.reshape(-1) != expected.reshape(-1))
    i = bad[0]
    return (f"{what}: {bad.size} of {actual.size} differ; first at flat index {i}: "
            f"got 0x{int(actual.reshape(-1)[i]):0{2 * actual.itemsize}x}, "
            f"expected 0x{int(expected.reshape(-1)[i]):0{2 * expected.itemsize}x}")


@pytest.fixture
def assert_bits_equal():
    """Compare two arrays bit for bit (same itemsize), reporting the first mismatch in hex."""
    def check(actual, expected, what="bits"):
        actual, expected = np.asarray(actual), np.asarray(expected)
        assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
        uint = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[actual.itemsize]
        a, e = actual.view(uint), expected.view(uint)
        assert np.array_equal(a, e), _first_mismatch_report(a, e, what)
    return check


@pytest.fixture
def seed():
    """A fresh random seed for torch (STYLE: fresh inputs each run), printed so a failure can be
    replayed."""
    import torch
    s = int(np.random.SeedSequence().entropy % 2 ** 31)
    torch.manual_seed(s)
    print(f"seed {s}")
    return s
