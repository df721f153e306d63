"""Process-wide test settings for tests/ and distributed_tests/."""
import os

# Before NumPy loads: OpenBLAS threads fight torch's on the reference backend's small products
# (measured ~170x slower per training step on 2 cores without this).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
