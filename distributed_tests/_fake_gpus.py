"""pytest plugin for test_dist_launch.py: torch.cuda.device_count() answers
$QTRAIN_FAKE_GPU_COUNT, so the NCCL skip paths can be checked on a machine without GPUs
(`python -m pytest -p distributed_tests._fake_gpus ...`). Nothing else uses it."""
import os

import torch


def pytest_configure(config):
    count = int(os.environ.get("QTRAIN_FAKE_GPU_COUNT", "0"))
    torch.cuda.device_count = lambda: count
