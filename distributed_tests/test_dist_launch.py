"""The launcher's NCCL paths, checked without GPUs: a world larger than the GPU count is
refused up front and the 4-rank tests and conformance cases skip, saying why; NCCL's
environment defaults; the reference device; a rank torn down without a report (what the
NCCL watchdog does) is recorded as a failure of that rank."""
import os
import subprocess
import sys
import time

import pytest
import torch

from distributed_tests import ckpt_workers as C
from distributed_tests import launch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REASON = "needs 4 GPUs for 4 NCCL ranks, 2 present"


@pytest.fixture
def nccl_with_2_gpus(monkeypatch):
    monkeypatch.setenv(launch.ENV_BACKEND, "nccl")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


def test_too_many_ranks_for_the_gpus_is_refused_up_front(nccl_with_2_gpus):
    t0 = time.monotonic()
    with pytest.raises(launch.TooFewGPUs, match=REASON):
        launch.run_workers(C.failing_step, 4, 1, timeout_s=30)
    assert time.monotonic() - t0 < 5                     # refused before spawning anything
    assert launch.gpu_shortfall(2) is None
    assert launch.gpu_shortfall(4, "gloo") is None       # gloo ranks share the CPU
    with pytest.raises(pytest.skip.Exception, match=REASON):
        launch.skip_if_too_few_gpus(4)
    launch.skip_if_too_few_gpus(2)                       # no skip


def test_reference_device_follows_the_process_group_backend(monkeypatch):
    monkeypatch.setenv(launch.ENV_BACKEND, "gloo")
    assert launch.reference_device() == torch.device("cpu")
    monkeypatch.setenv(launch.ENV_BACKEND, "nccl")
    assert launch.reference_device() == torch.device("cuda", 0)
    monkeypatch.delenv(launch.ENV_BACKEND)
    assert launch.reference_device() == torch.device("cpu")


def test_nccl_environment_defaults(monkeypatch):
    monkeypatch.delenv("NCCL_NVLS_ENABLE", raising=False)
    monkeypatch.setenv("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")
    launch._nccl_env()
    assert os.environ["NCCL_NVLS_ENABLE"] == "0"
    assert os.environ["TORCH_SYMM_MEM_DISABLE_MULTICAST"] == "1"
    monkeypatch.setenv("NCCL_NVLS_ENABLE", "1")          # an explicit setting is kept
    launch._nccl_env()
    assert os.environ["NCCL_NVLS_ENABLE"] == "1"


def test_four_rank_tests_skip_with_the_reason_under_nccl_with_2_gpus():
    """The real fixtures (P-DP, 2-D) under QTRAIN_DIST_BACKEND=nccl with 2 (fake) GPUs: skipped
    with the reason, nothing launched."""
    env = dict(os.environ, QTRAIN_DIST_BACKEND="nccl", QTRAIN_FAKE_GPU_COUNT="2")
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
         "-p", "distributed_tests._fake_gpus",
         "distributed_tests/test_dist_fsdp.py::test_fsdp_data_parallel_4_ranks_within_bound_P_DP",
         "distributed_tests/test_dist_tensor_parallel.py::test_fsdp_x_tp_2d_mesh_4_ranks"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    assert "4 skipped" in text, text
    assert text.count(REASON) >= 2, text                 # one line per fixture at least


def test_conformance_four_rank_case_skips_under_nccl_with_2_gpus(nccl_with_2_gpus):
    from qtrain.conformance.backends import resolve
    from qtrain.conformance.cases import load_cases
    from qtrain.conformance.runner import run_case
    cases = [c for c in load_cases() if c["op"] == "distributed" and c["ranks"] == 4]
    assert cases
    for case in cases:
        result = run_case(case, resolve("reference"), "cpu", subject="reference")
        assert result.status == "skip", (case["name"], result.notes)
        assert any(REASON in n for n in result.notes), (case["name"], result.notes)


def test_rank_torn_down_without_a_report_is_a_failure_of_that_rank():
    """kill_on_failure=False (as test_survivor_times_out_on_its_own under NCCL): rank 1 reports
    its error, rank 0 dies by a signal without a report; both are failures, by rank."""
    with pytest.raises(launch.WorkerFailed) as err:
        launch.run_workers(C.torn_down_survivor, 2, 1, timeout_s=60, kill_on_failure=False,
                           backend="gloo")
    failures = dict(err.value.failures)
    assert sorted(failures) == [0, 1], err.value.failures
    assert "injected failure on rank 1" in failures[1]
    assert "no report" in failures[0] and "SIGKILL" in failures[0], failures[0]
    assert err.value.failures[0][0] == 1                 # the first to fail is named first
