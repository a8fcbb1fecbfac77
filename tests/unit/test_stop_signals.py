"""The launcher's Ctrl-C policy (cluster/signals.py) with real signals to this process: the first
asks for a checkpoint, a second while it is written is said and ignored, a third force-quits."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cluster.signals import signals_request_stop
from tests.conftest import REPO
from trainer.checkpointing.protocol import MANIFEST
from trainer.stopping import STOP_REQUEST_FILE


def _signal_self(signum: int) -> None:
    os.kill(os.getpid(), signum)
    time.sleep(0.1)  # handled by the signal thread (cluster/signals.py) within a few ms


def test_first_ctrl_c_requests_a_checkpoint_second_is_ignored_third_force_quits(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    forced: list[bool] = []
    before = signal.getsignal(signal.SIGINT)
    with signals_request_stop(tmp_path, force_quit=lambda: forced.append(True)):
        _signal_self(signal.SIGINT)
        assert (tmp_path / STOP_REQUEST_FILE).read_text() == str(int(signal.SIGINT))
        # Named as people know it (trial 51a: "signal 2").
        said = capfd.readouterr().err
        assert "Ctrl-C (SIGINT): workers will checkpoint and stop after the current step" in said
        assert "(before the first step: stop, nothing to save)" in said  # trial 63e: no checkpoint promised there

        (tmp_path / STOP_REQUEST_FILE).unlink()  # a second request would rewrite it
        _signal_self(signal.SIGINT)
        assert "Ctrl-C (SIGINT) again: already stopping, finishing the checkpoint first" in capfd.readouterr().err
        assert not forced and not (tmp_path / STOP_REQUEST_FILE).exists()

        committed = tmp_path / "checkpoints" / "step-5"  # the stop's checkpoint, committed meanwhile
        committed.mkdir(parents=True)
        (committed / MANIFEST).write_text("{}")
        _signal_self(signal.SIGINT)
        assert forced == [True]
        err = capfd.readouterr().err
        assert "force-quitting; the rerun resumes from checkpoints/step-5, the newest committed checkpoint" in err
    assert signal.getsignal(signal.SIGINT) is before  # the caller's handler is back


def test_other_stop_signals_after_the_request_do_not_count_towards_a_force_quit(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    forced: list[bool] = []
    with signals_request_stop(tmp_path, force_quit=lambda: forced.append(True)):
        _signal_self(signal.SIGTERM)
        assert (tmp_path / STOP_REQUEST_FILE).read_text() == str(int(signal.SIGTERM))
        for _ in range(3):
            _signal_self(signal.SIGUSR1)
        _signal_self(signal.SIGINT)
        assert not forced
        assert capfd.readouterr().err.count("already stopping") == 4


def test_without_a_force_quit_action_the_third_ctrl_c_raises_keyboard_interrupt(tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt):
        with signals_request_stop(tmp_path):
            for _ in range(3):
                _signal_self(signal.SIGINT)


def test_each_ctrl_c_counts_while_the_main_thread_is_busy_in_c(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Ray's fit() keeps the main thread in C++ and looks for signals about once a second; Python
    runs a handler once for all the signals of a kind that came meanwhile. Three quick Ctrl-Cs
    must still be three (the force-quit), and the stop request must be written at once."""
    forced: list[float] = []
    sent: list[float] = []

    def press_three_times() -> None:
        time.sleep(0.2)
        for _ in range(3):
            sent.append(time.monotonic())
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.1)

    data = bytes(300 << 20)
    with signals_request_stop(tmp_path, force_quit=lambda: forced.append(time.monotonic())):
        presser = threading.Thread(target=press_three_times)
        presser.start()
        deadline = time.monotonic() + 30
        while not forced and time.monotonic() < deadline:
            # Like Ray's wait: in C with the GIL released, no look at pending signals (~0.5-1 s).
            hashlib.sha256(data).digest()
        presser.join()
    assert len(forced) == 1, capfd.readouterr().err
    assert forced[0] - sent[-1] < 0.5  # not at the end of the busy second
    err = capfd.readouterr().err
    assert err.count("already stopping") == 1 and "force-quitting" in err


EARLY_SIGNAL = """
import os, signal, time
from trainer.stopping import StopFlag, note_stop_signals
note_stop_signals()
os.kill(os.getpid(), signal.SIGTERM)  # while the worker starts: no handler of the run's yet
time.sleep(0.05)
flag = StopFlag()
flag.install()
print(flag.requested, flag.signum == signal.SIGTERM, flag.check())
"""


def test_a_stop_signal_before_the_runs_handler_is_noted_not_lost_nor_fatal() -> None:
    """A worker's first step notes stop signals (cluster/worker.py); the run's StopFlag, installed
    later, starts out requested, so the run stops before training instead of dying of the signal."""
    result = subprocess.run([sys.executable, "-c", EARLY_SIGNAL], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["True", "True", "True"]


def test_a_rank_that_stops_because_a_peer_saw_the_request_records_its_signal(tmp_path: Path) -> None:
    """Trial 63e: two Ray workers, a Ctrl-C as scoring began: rank 1 read the launcher's request file,
    rank 0 stopped because the ranks agreed (any_rank) without reading it, recorded no signal, and
    the run exited 3, not 130."""
    from trainer.stopping import StopFlag

    request = tmp_path / STOP_REQUEST_FILE
    seen, agreed = StopFlag(request_file=request), StopFlag(request_file=request)
    assert agreed.signal_number() is None  # no request yet: no signal
    request.write_text(str(int(signal.SIGINT)))
    assert seen.check() and seen.signal_number() == signal.SIGINT
    agreed.requested = True  # as the training loop marks a stop the ranks agreed on
    assert agreed.signal_number() == signal.SIGINT
    own = StopFlag(request_file=request)
    own.signum, own.requested = int(signal.SIGTERM), True  # a signal this rank got itself wins
    assert own.signal_number() == signal.SIGTERM


AGREE_SCRIPT = """
import json, sys, torch.distributed as dist
from pathlib import Path
from trainer.stopping import StopFlag

rank, port, request = int(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
# Only rank 1 is told (its own signal or the file); rank 0 reads nothing itself.
flag = StopFlag(request_file=request if rank == 1 else None)
before = flag.agreed("cpu")  # no request yet: both go on
if rank == 1:
    request.write_text("2")
dist.barrier()
after = flag.agreed("cpu", step=3)
print(json.dumps({"before": before, "after": after, "requested": flag.requested}))
dist.destroy_process_group()
"""


def test_ranks_agree_on_a_stop_only_one_of_them_was_asked_for(tmp_path: Path) -> None:
    """Two real gloo ranks: a stop seen by one rank is agreed by both at the same check (or the next
    collective hangs), and the rank that stopped for its peer counts itself stopped."""
    from cluster.local import free_port

    port = str(free_port())
    request = tmp_path / STOP_REQUEST_FILE
    ranks = [
        subprocess.Popen(
            [sys.executable, "-c", AGREE_SCRIPT, str(rank), port, str(request)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        for rank in (0, 1)
    ]
    answers = [json.loads(rank.communicate(timeout=120)[0].strip().splitlines()[-1]) for rank in ranks]
    assert [rank.returncode for rank in ranks] == [0, 0]
    assert answers == [{"before": False, "after": True, "requested": True}] * 2


class _GonePipe:
    """stderr whose reader has exited (`ftl train ... | head`): every write raises."""

    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self) -> None:
        raise BrokenPipeError(32, "Broken pipe")


def test_a_stop_is_asked_for_when_the_reader_of_ftls_output_has_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Trial 64a: `ftl train ... | head -4`, then Ctrl-C and SIGTERM were both lost: the notice raised
    BrokenPipeError in the handler before the request was written, and the launcher polled on."""
    forced: list[bool] = []
    monkeypatch.setattr(sys, "stderr", _GonePipe())
    with signals_request_stop(tmp_path, force_quit=lambda: forced.append(True)):
        _signal_self(signal.SIGINT)
        assert (tmp_path / STOP_REQUEST_FILE).read_text() == str(int(signal.SIGINT))
        _signal_self(signal.SIGINT)
        _signal_self(signal.SIGINT)  # the handler lives on: a third Ctrl-C still force-quits
        assert forced == [True]
