"""Fault tolerance with 2 real gloo worker processes: sharded checkpoints (FSDP2 via DCP, ZeRO via
the DeepSpeed engine) resume bit-exactly, FSDP2 reshards to another worker count, ZeRO does
through DeepSpeed's universal checkpoint (2 -> 1 -> 2) and refuses what that cannot do (NVMe
offload) before building the model, a hung collective fails the run, and workers that do not
share the run directory are refused.

Tolerance for a worker-count change (same global batch): the maths is identical but summation
order of the gradient reduction differs, as in test_parallel_parity: losses agree to 1e-5
relative, weights to 1e-4 absolute. Same worker count: bit-identical.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import FTL, REPO, write_config
from trainer.checkpointing.protocol import committed_checkpoints, validate_checkpoint
from trainer.errors import TrainerInputError
from trainer.metrics import read_metrics

pytestmark = pytest.mark.integration

STEPS = 4


def _config(
    tmp_path: Path,
    name: str,
    tiny_model_dir: Path,
    parallel: dict[str, Any],
    workers: int = 2,
    micro: int = 2,
    steps: int = STEPS,
    method: str = "lora",
    **checkpoint: Any,
) -> Path:
    return write_config(
        tmp_path / f"{name}.yaml",
        tiny_model_dir,
        tmp_path / name,
        parallel=parallel,
        method={"type": method},
        training={"max_steps": steps, "micro_batch_size": micro},
        eval={"max_samples": 4},
        checkpoint={"every_steps": 2, **checkpoint},
        cluster={"workers": workers},
    )


def _train(config: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*FTL, "train", str(config)], env=dict(os.environ, **env), cwd=REPO, capture_output=True, text=True, timeout=600
    )


def _adapter(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "final" / "adapter" / "adapter_model.safetensors"))


def _assert_every_file_claimed(run_dir: Path) -> None:
    """Each rank named the files it wrote (and fsynced them itself): the commit never had to
    fsync a file no rank claimed, for this layout and library version."""
    assert "no rank reported writing" not in (run_dir / "logs" / "rank-0.log").read_text()


def _assert_bit_identical(run_dir: Path, golden: Path, steps: int = STEPS) -> None:
    want = {r["step"]: r["loss"] for r in read_metrics(golden, "train")}
    have = read_metrics(run_dir, "train")
    assert sorted({r["step"] for r in have}) == list(range(1, steps + 1))
    assert all(r["loss"] == want[r["step"]] for r in have)
    a, b = _adapter(golden), _adapter(run_dir)
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def test_fsdp2_async_save_killed_in_flight_resumes_exactly_and_reshards(tiny_model_dir: Path, tmp_path: Path) -> None:
    fsdp = {"strategy": "fsdp"}
    golden = _train(_config(tmp_path, "golden", tiny_model_dir, fsdp))
    assert golden.returncode == 0, golden.stderr[-3000:]
    _assert_every_file_claimed(tmp_path / "golden")

    # Rank 0 dies right after starting the asynchronous write of step 4: step 2 stays the latest.
    config = _config(tmp_path, "run", tiny_model_dir, fsdp, async_save=True)
    killed = _train(config, FTL_FAULT_KILL_AT="async_in_flight@4")
    assert killed.returncode != 0
    assert [p.name for p in committed_checkpoints(tmp_path / "run")] == ["step-2"]
    # The local backend names the killed rank and where the same command resumes.
    said = killed.stderr
    assert "worker 0 was killed by SIGKILL" in said and "checkpoints up to step-2 are kept" in said, said[-3000:]
    manifest = (tmp_path / "run" / "checkpoints" / "step-2" / "manifest.json").read_text()
    assert '"layout": "dcp"' in manifest and "state/__1_0.distcp" in manifest  # both ranks' shards
    resumed = _train(config)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_bit_identical(tmp_path / "run", tmp_path / "golden")

    # The golden run's step-2 checkpoint, resumed by one worker with the same global batch.
    one = _config(tmp_path, "one", tiny_model_dir, fsdp, workers=1, micro=4)
    (tmp_path / "one" / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "golden" / "checkpoints" / "step-2", tmp_path / "one" / "checkpoints" / "step-2")
    single = _train(one)
    assert single.returncode == 0, single.stderr[-3000:]
    want = {r["step"]: r for r in read_metrics(tmp_path / "golden", "train")}
    have = read_metrics(tmp_path / "one", "train")
    assert [r["step"] for r in have] == [3, 4]
    assert [r["samples_seen"] for r in have] == [want[3]["samples_seen"], want[4]["samples_seen"]]  # no gap, no repeat
    # The same global batch on one worker: the same run, no change recorded with the start.
    assert "config_change" not in read_metrics(tmp_path / "one", "start")[-1]
    assert [r["loss"] for r in have] == pytest.approx([want[3]["loss"], want[4]["loss"]], rel=1e-5)
    a, b = _adapter(tmp_path / "golden"), _adapter(tmp_path / "one")
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-4, rtol=0)


def _assert_continues_golden(run_dir: Path, golden: Path, steps: list[int]) -> None:
    """The resumed steps train the golden run's samples (same global sample indices: none repeated
    or skipped) to the same losses, within the worker-count tolerance."""
    want = {r["step"]: r for r in read_metrics(golden, "train")}
    have = read_metrics(run_dir, "train")
    assert [r["step"] for r in have] == steps
    assert [r["samples_seen"] for r in have] == [want[s]["samples_seen"] for s in steps]
    assert [r["loss"] for r in have] == pytest.approx([want[s]["loss"] for s in steps], rel=1e-5)


def _copy_checkpoint(source: Path, run_dir: Path) -> Path:
    (run_dir / "checkpoints").mkdir(parents=True)
    return Path(shutil.copytree(source, run_dir / "checkpoints" / source.name))


def test_zero2_resumes_exactly_async_too_and_reshards_through_universal_checkpoint(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    zero = {"strategy": "deepspeed", "zero_stage": 2}
    steps = 6  # 2 -> 1 worker at step 2, back to 2 workers at step 4
    golden = _train(_config(tmp_path, "golden", tiny_model_dir, zero, steps=steps, keep_last=3))
    assert golden.returncode == 0, golden.stderr[-3000:]
    _assert_every_file_claimed(tmp_path / "golden")
    config = _config(tmp_path, "run", tiny_model_dir, zero, steps=steps, keep_last=3)
    stopped = _train(config, FTL_FAULT_STOP_AT_STEP="3")
    assert stopped.returncode == 3, stopped.stderr[-3000:]
    step3 = tmp_path / "run" / "checkpoints" / "step-3"
    assert (step3 / "ds").is_dir() and not (step3 / "latest").exists()  # DeepSpeed's own pointer is never written
    resumed = _train(config)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_bit_identical(tmp_path / "run", tmp_path / "golden", steps)

    # Asynchronous save: rank 0 dies right after starting the background write of step 4 (both
    # ranks' partitions in flight): step 2 stays the latest, and the resume matches the golden run.
    config = _config(tmp_path, "async", tiny_model_dir, zero, steps=steps, keep_last=3, async_save=True)
    killed = _train(config, FTL_FAULT_KILL_AT="async_in_flight@4")
    assert killed.returncode != 0
    assert [p.name for p in committed_checkpoints(tmp_path / "async")] == ["step-2"]
    manifest = (tmp_path / "async" / "checkpoints" / "step-2" / "manifest.json").read_text()
    assert "ds/zero_pp_rank_1_mp_rank_00_optim_states.pt" in manifest  # rank 1's partition, written in the background
    resumed = _train(config)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_every_file_claimed(tmp_path / "async")
    _assert_bit_identical(tmp_path / "async", tmp_path / "golden", steps)
    assert all(validate_checkpoint(path) is None for path in committed_checkpoints(tmp_path / "async"))

    # 2 -> 1: the golden run's step-2 checkpoint, resumed by one worker with the same global batch,
    # stopped after step 4 (which it checkpoints as a 1-worker ZeRO checkpoint).
    step2 = _copy_checkpoint(tmp_path / "golden" / "checkpoints" / "step-2", tmp_path / "one")
    one = _config(tmp_path, "one", tiny_model_dir, zero, workers=1, micro=4, steps=steps, keep_last=3)
    single = _train(one, FTL_FAULT_STOP_AT_STEP="4")
    assert single.returncode == 3, single.stderr[-3000:]
    _assert_continues_golden(tmp_path / "one", tmp_path / "golden", [3, 4])
    assert validate_checkpoint(step2) is None  # the committed checkpoint is untouched: every sha256 still matches
    assert (tmp_path / "one" / ".universal" / "step-2" / "ds" / "zero").is_dir()  # the derived copy it loaded

    # 1 -> 2: that 1-worker checkpoint, resumed by two workers to the end.
    _copy_checkpoint(tmp_path / "one" / "checkpoints" / "step-4", tmp_path / "two")
    two = _train(_config(tmp_path, "two", tiny_model_dir, zero, steps=steps, keep_last=3))
    assert two.returncode == 0, two.stderr[-3000:]
    assert not (tmp_path / "two" / ".universal").exists()  # made for the resume, gone with the finish
    _assert_continues_golden(tmp_path / "two", tmp_path / "golden", [5, 6])
    a, b = _adapter(tmp_path / "golden"), _adapter(tmp_path / "two")
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-4, rtol=0)

    # NVMe offload cannot load a universal checkpoint: refused before any model work.
    _copy_checkpoint(tmp_path / "golden" / "checkpoints" / "step-2", tmp_path / "nvme")
    nvme = {**zero, "offload_optimizer": "nvme", "nvme_path": str(tmp_path / "swap")}
    refused = _train(_config(tmp_path, "nvme", tiny_model_dir, nvme, workers=1, micro=4, steps=steps))
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert "partitioned over 2 worker(s)" in refused.stderr and "NVMe" in refused.stderr
    assert "cluster.workers=2" in refused.stderr and "parallel.strategy=fsdp" in refused.stderr
    assert not (tmp_path / "nvme" / "metrics.jsonl").exists()


def test_zero3_full_finetuning_reshards_2_to_1(tiny_model_dir: Path, tmp_path: Path) -> None:
    """ZeRO-3 partitions the parameters too, and full fine-tuning has two optimizer groups (decayed
    weights, norms): DeepSpeed's ZeRO-3 universal loader shares one Adam step counter between them,
    which ftl undoes (deepspeed_state._unshare_step_counters); without that step 4 drifts by ~3e-5."""
    zero3 = {"strategy": "deepspeed", "zero_stage": 3}
    golden = _train(_config(tmp_path, "golden", tiny_model_dir, zero3, method="full"))
    assert golden.returncode == 0, golden.stderr[-3000:]
    _assert_every_file_claimed(tmp_path / "golden")
    step2 = _copy_checkpoint(tmp_path / "golden" / "checkpoints" / "step-2", tmp_path / "one")
    single = _train(_config(tmp_path, "one", tiny_model_dir, zero3, workers=1, micro=4, method="full"))
    assert single.returncode == 0, single.stderr[-3000:]
    # Said on the console before DeepSpeed's progress bars (trial 63b: only in the rank's log).
    said = single.stdout + single.stderr
    assert "warning: converting ZeRO checkpoint" in said and "DeepSpeed's progress bars follow" in said, said[-3000:]
    assert "as it was written by 2 workers and this start has 1 (" in said, said[-3000:]  # trial 63c: the counts
    _assert_continues_golden(tmp_path / "one", tmp_path / "golden", [3, 4])
    assert validate_checkpoint(step2) is None


def test_universal_copy_is_reused_only_when_it_matches(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The conversion runs once per checkpoint: a complete copy made from the same committed
    checkpoint (manifest hash) is reused, one made from another checkpoint is replaced, and the
    committed checkpoint is only read."""
    from trainer.checkpointing.universal import SOURCE_FILE, prepare_universal

    zero = {"strategy": "deepspeed", "zero_stage": 2}
    done = _train(_config(tmp_path, "golden", tiny_model_dir, zero, steps=2))
    assert done.returncode == 0, done.stderr[-3000:]
    checkpoint = tmp_path / "golden" / "checkpoints" / "step-2"
    copy = prepare_universal(checkpoint, tmp_path / "resumed", rank=0)
    assert (
        copy == tmp_path / "resumed" / ".universal" / "step-2"
        and (copy / "ds" / "zero" / "optimizer_state.pt").is_file()
    )
    made = (copy / SOURCE_FILE).stat().st_mtime_ns
    assert prepare_universal(checkpoint, tmp_path / "resumed", rank=0) == copy
    assert (copy / SOURCE_FILE).stat().st_mtime_ns == made  # reused, not converted again
    (copy / SOURCE_FILE).write_text('{"checkpoint": "elsewhere", "manifest_sha256": "0"}')
    prepare_universal(checkpoint, tmp_path / "resumed", rank=0)
    assert '"elsewhere"' not in (copy / SOURCE_FILE).read_text()  # another checkpoint's copy: converted again
    assert validate_checkpoint(checkpoint) is None
    assert [p.name for p in (tmp_path / "resumed" / ".universal").iterdir()] == ["step-2"]  # no debris

    # A conversion that fails is an error naming the checkpoint and what to do, not a half-made copy.
    broken = tmp_path / "broken" / "checkpoints" / "step-2"
    shutil.copytree(checkpoint, broken, ignore=shutil.ignore_patterns("mp_rank_00_model_states.pt"))
    with pytest.raises(TrainerInputError, match=r"converting ZeRO checkpoint .*broken.*step-2.* failed.*worker count"):
        prepare_universal(broken, tmp_path / "broken", rank=0)
    assert not (tmp_path / "broken" / ".universal" / "step-2").exists()


def test_hung_collective_fails_the_run(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Rank 1 stops answering; rank 0's next collective times out after cluster.collective_timeout_s
    (not the 30-minute default) and the run exits non-zero (the watchdog is off to show that)."""
    config = write_config(
        tmp_path / "c.yaml",
        tiny_model_dir,
        tmp_path / "run",
        training={"max_steps": 4, "watchdog_timeout_s": 0},
        cluster={"workers": 2, "collective_timeout_s": 10},
    )
    result = _train(config, FTL_FAULT_HANG_AT="step_end@2", FTL_FAULT_RANK="1")
    assert result.returncode not in (0, None)
    assert "worker 0 exited with code" in result.stderr
    # gloo names the timeout it waited: the configured 10 s, not the default (no wall-clock assertion:
    # a loaded machine must not fail this).
    assert "Timed out waiting 10000ms" in result.stderr, result.stderr[-3000:]


def test_workers_that_do_not_share_the_run_dir_are_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    # Two workers of one job, each started on "its own node" with a different (unshared) run dir.
    dirs = [tmp_path / "node0" / "run", tmp_path / "node1" / "run"]
    port = _free_port()
    procs = []
    for rank, run_dir in enumerate(dirs):
        run_dir.mkdir(parents=True)
        write_config(run_dir / "config.yaml", tiny_model_dir, run_dir, cluster={"workers": 2})
        env = dict(
            os.environ,
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE="2",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "cluster.worker", str(run_dir)],
                env=env,
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [2, 2], outputs
    assert all("output.dir is not shared by all workers: rank 1" in out for out in outputs)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_stop_signal_reaches_every_worker(tiny_model_dir: Path, tmp_path: Path) -> None:
    """A real SIGTERM to the launcher (what Slurm/Kubernetes send) is forwarded to both workers,
    which checkpoint at the same step and exit with 143."""
    config = write_config(
        tmp_path / "c.yaml", tiny_model_dir, tmp_path / "run", training={"max_steps": 400}, cluster={"workers": 2}
    )
    proc = subprocess.Popen(
        [*FTL, "train", str(config)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 300
    while len(read_metrics(tmp_path / "run", "train")) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    latest = committed_checkpoints(tmp_path / "run")[-1]
    assert (latest / "rng-rank1.pt").exists() and not (tmp_path / "run" / "final").exists()


def test_after_a_bug_s_crash_on_two_local_workers_the_advice_is_to_fix_it_first(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """A TypeError repeats on every rerun: the advice is to fix its cause (Ray said it; the local
    backend said "run the same command again" only). A machine's error (here a RuntimeError) keeps
    the usual advice, and a later launch does not read the earlier one's record."""
    config = _config(tmp_path, "run", tiny_model_dir, {"strategy": "ddp"})
    bug = _train(config, FTL_FAULT_RAISE_AT="step_end@3", FTL_FAULT_RAISE="TypeError", FTL_FAULT_RANK="1")
    assert bug.returncode not in (0, None, 2), bug.stderr[-3000:]
    assert (
        "ftl: the checkpoints up to step-2 are kept: run the same command again to resume from it once its cause is "
        "fixed: TypeError is an error of the code or of its input, not of a machine, so the same command meets it "
        "again" in bug.stderr
    ), bug.stderr[-3000:]
    machine = _train(config, FTL_FAULT_RAISE_AT="step_end@3", FTL_FAULT_RAISE="RuntimeError", FTL_FAULT_RANK="1")
    assert machine.returncode not in (0, None, 2), machine.stderr[-3000:]
    assert "the checkpoints up to step-2 are kept: run the same command again to resume from it" in machine.stderr
    assert "cause is fixed" not in machine.stderr, machine.stderr[-3000:]
    # torchrun's workers record it alike (its advice names its own restarts).
    torchrun = _config(tmp_path, "torchrun", tiny_model_dir, {"strategy": "ddp"})
    text = torchrun.read_text().replace("backend: local", "backend: torchrun")
    torchrun.write_text(text)
    bug = _train(torchrun, FTL_FAULT_RAISE_AT="step_end@3", FTL_FAULT_RAISE="KeyError", FTL_FAULT_RANK="1")
    assert (
        "fixed: KeyError is an error of the code or of its input, not of a machine, so the same command (or a "
        "torchrun restart) meets it again" in bug.stderr
    ), bug.stderr[-3000:]
