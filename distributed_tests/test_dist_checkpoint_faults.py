"""Distributed checkpoints (original dtype, bit-identical resume, atomic commit) and faults (a
failing rank never hangs the others past a timeout)."""
import os
import time

import pytest
import torch

from distributed_tests import ckpt_workers as C
from distributed_tests import parity
from distributed_tests.launch import DEADLINE_SCALE, WorkerFailed, dist_backend, run_workers


@pytest.mark.parametrize("recipe,f8ag,moe", [("tensorwise", True, False), ("rowwise", False, True)],
                         ids=["tensorwise-f8ag", "moe-rowwise"])
def test_resume_is_bit_identical(tmp_path, recipe, f8ag, moe):
    """4 steps straight (saving after step 2 on the way) vs fresh processes that load the
    checkpoint and run steps 3-4: same bits. moe: a MoE block whose experts hold
    GroupedExpertsWeight (qtrain.moe) under FSDP2."""
    path = str(tmp_path / "ckpt")
    straight = run_workers(C.ckpt_run, 2, recipe, torch.float32, path, 4, 2, False, False, f8ag,
                           moe)
    resumed = run_workers(C.ckpt_run, 2, recipe, torch.float32, path, 4, None, True, False,
                          f8ag, moe)
    assert resumed[0]["start"] == 2
    for i, (a, b) in enumerate(zip(resumed[0]["loss"], straight[0]["loss"][2:])):
        parity.assert_bitwise(f"resumed loss[{i + 2}]", a, b)
    for rank in (0, 1):
        for k, want in straight[rank]["params"].items():
            parity.assert_bitwise(f"resumed param {k} rank {rank}", resumed[rank]["params"][k],
                                  want)
    # saved in the original dtype: the weight wrappers are stored as their fp32 weights
    from qtrain.dist_checkpoint import saved_dtypes
    dtypes = saved_dtypes(path)
    names = ["model.experts.w1", "model.experts.w2"] if moe else ["model.0.weight",
                                                                   "model.2.weight"]
    assert all(dtypes[n] == torch.float32 for n in names), dtypes


def test_killed_writer_leaves_no_checkpoint(tmp_path):
    """Rank 0 dies after writing its shard files, before the commit: no `path` appears, the
    unfinished tmp folder is reported, and a marker-less folder is refused on load."""
    from qtrain.dist_checkpoint import IncompleteCheckpointError, checkpoint_info
    path = str(tmp_path / "ckpt")
    with pytest.raises(WorkerFailed):
        run_workers(C.ckpt_run, 2, None, torch.float32, path, 4, 2, False, True, False,
                    timeout_s=90, pg_timeout_s=20)
    assert not os.path.exists(path)
    tmps = [p for p in os.listdir(tmp_path) if p.startswith("ckpt.tmp-")]
    assert len(tmps) == 1
    with pytest.raises(IncompleteCheckpointError, match="unfinished writes"):
        checkpoint_info(path)
    # a folder copied before the commit (shards, no marker) is detected as incomplete too
    os.rename(tmp_path / tmps[0], path)
    with pytest.raises(IncompleteCheckpointError, match="no COMPLETE marker"):
        checkpoint_info(path)


def test_failing_rank_is_reported_and_the_group_is_killed():
    t0 = time.monotonic()
    with pytest.raises(WorkerFailed, match="injected failure on rank 1") as err:
        run_workers(C.failing_step, 2, 1, timeout_s=90)
    assert err.value.failures[0][0] == 1
    assert time.monotonic() - t0 < 60


def test_survivor_times_out_on_its_own(monkeypatch):
    """Without the launcher's kill (as under torchrun), the process-group timeout ends the
    rank left waiting in a collective for its dead peer. gloo: the collective raises after
    the timeout and the rank reports it. nccl: the collective is asynchronous and the rank
    waits on the host; the NCCL watchdog catches the timeout and, by default
    (TORCH_NCCL_ASYNC_ERROR_HANDLING=3), tears the process down: rank 0 either reports an
    error or exits non-zero without a report (a signal such as SIGABRT). Either way it ends by
    itself, long before the launcher's deadline; a rank that hung would show up as the
    launcher's deadline (rank -1) instead."""
    backend = dist_backend()
    nccl = backend == "nccl"
    # nccl: CUDA/NCCL start-up per rank and the watchdog's teardown take longer than gloo's
    # raise; the process-group timeout itself is the same 5 s. `cap`: the launcher's deadline
    # (run_workers scales timeout_s by DEADLINE_SCALE), above the limit asserted.
    cap, limit = (150, 120) if nccl else (90, 60)
    if nccl:   # the watchdog would first write its flight-recorder dump (not what is tested)
        monkeypatch.setenv("TORCH_NCCL_DUMP_ON_TIMEOUT", "0")
    t0 = time.monotonic()
    with pytest.raises(WorkerFailed) as err:
        run_workers(C.failing_step, 2, 1, timeout_s=cap / DEADLINE_SCALE[backend],
                    pg_timeout_s=5, kill_on_failure=False)
    failures = dict(err.value.failures)
    assert -1 not in failures, err.value.failures        # no rank hung to the deadline
    assert "injected failure on rank 1" in failures.get(1, ""), err.value.failures
    assert 0 in failures, err.value.failures             # rank 0 failed by itself
    if not nccl:
        assert "no report" not in failures[0], failures[0]   # gloo: the collective raised
    assert time.monotonic() - t0 < limit
