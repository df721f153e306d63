"""Process-wide test settings for tests/ and distributed_tests/."""
import os

# Before NumPy loads: OpenBLAS threads fight torch's on the reference backend's small products
# (measured ~170x slower per training step on 2 cores without this).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

# Without CUDA the fast backend's Triton kernels run in the CPU interpreter, which must be
# chosen before qtrain.fast is first imported; set here so that any subset of the test files,
# in any order, imports it that way.
import torch  # noqa: E402

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
