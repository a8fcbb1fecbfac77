"""Ray Train's transient "Failed to send resource request" warning and its traceback become one
line on the console; every other forwarded line is printed as Ray prints it (trial 33a)."""

from __future__ import annotations

from typing import Any

from cluster.ray_console_filter import SAID, TransientWarningFilter, quiet_transient_ray_warnings

# As the controller wrote it in trial 33a (a run that then finished normally), Ray's prefix aside.
WARNING = [
    "Failed to send resource request for train-aa3d757cc0ff4936b310edb50d9fdaee. If this only happens transiently during network partition or CPU being overloaded, it's safe to ignore this error. If this error persists, file a GitHub issue.",
    "Traceback (most recent call last):",
    '  File "/work/main/.venv/lib/python3.11/site-packages/ray/train/v2/_internal/execution/scaling_policy/autoscaling_coordinator_client.py", line 58, in send_resource_request',
    "    ray.get(",
    '  File "/work/main/.venv/lib/python3.11/site-packages/ray/_private/auto_init_hook.py", line 22, in auto_init_wrapper',
    "    return fn(*args, **kwargs)",
    "           ^^^^^^^^^^^^^^^^^^^",
    '  File "/work/main/.venv/lib/python3.11/site-packages/ray/_private/client_mode_hook.py", line 134, in wrapper',
    "    return func(*args, **kwargs)",
    "           ^^^^^^^^^^^^^^^^^^^^^",
    '  File "/work/main/.venv/lib/python3.11/site-packages/ray/_private/worker.py", line 3009, in get',
    "    values, debugger_breakpoint = worker.get_objects(",
    "                                  ^^^^^^^^^^^^^^^^^^^",
    '  File "/work/main/.venv/lib/python3.11/site-packages/ray/_private/worker.py", line 1007, in get_objects',
    "    ] = self.core_worker.get_objects(",
    "        ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^",
    '  File "python/ray/_raylet.pyx", line 3471, in ray._raylet.CoreWorker.get_objects',
    '  File "python/ray/includes/common.pxi", line 107, in ray._raylet.check_status',
    "ray.exceptions.GetTimeoutError: Get timed out: some object(s) not ready.",
]


def test_the_warning_and_its_traceback_become_one_line_once() -> None:
    quiet = TransientWarningFilter()
    before, after = ["worker line 1"], ["ftl 2026-12-05 05:14:20 data: reading x"]
    assert quiet.lines(1, before + WARNING + after) == before + [SAID] + after
    # Split across batches, and said again later: the traceback goes, the line is not repeated.
    assert quiet.lines(1, WARNING[:5]) == [] and quiet.lines(1, WARNING[5:] + after) == after
    # Another process's lines in between are kept.
    assert quiet.lines(1, WARNING[:3]) == [] and quiet.lines(2, ["other"]) == ["other"]
    assert quiet.lines(1, WARNING[3:]) == []


def test_a_warning_without_a_traceback_drops_nothing_after_it() -> None:
    quiet = TransientWarningFilter()
    assert quiet.lines(1, [WARNING[0], "the controller's next line"]) == [SAID, "the controller's next line"]


def test_a_traceback_that_never_ends_stops_being_skipped() -> None:
    quiet = TransientWarningFilter()
    quiet.lines(1, WARNING[:2] + ["  indented"] * 200)
    assert quiet.lines(1, ["  later"]) == ["  later"]


# The dump a Ray process printed under load in trial 36a (abridged; pids and addresses are examples).
MUTEX_DUMP = [
    "[mutex.cc : 1957] RAW: Check w == nullptr || (w->waitp->how == kShared) failed: Lock: Mutex corrupt: both reader and writer lock held: 0x7f3c",
    "*** SIGABRT received at time=1764947001 on cpu 1 ***",
    "PC: @     0x7f3c9a5e  (unknown)  pthread_kill",
    "    @     0x7f3c9a1b        32  (unknown)",
    "    @     0x7f3c9b2c  (unknown)  absl::Mutex::Lock()",
    "[2026-12-05 15:11:02,143 E 4711 4799] logging.cc:474: *** SIGABRT received at time=1764947001 on cpu 1 ***",
    "Fatal Python error: Aborted",
    "",
    "Thread 0x00007f3c (most recent call first):",
    '  File "/venv/lib/python3.11/site-packages/ray/_private/worker.py", line 946 in main_loop',
    "",
    "Extension modules: msgpack._cmsgpack, google._upb._message, psutil._psutil_linux (total: 12)",
]


def test_a_ray_process_abort_dump_becomes_one_line() -> None:
    """Ray's own 'Mutex corrupt' abort spewed ~15 lines that read as the run crashing (trial 36a)."""
    quiet = TransientWarningFilter()
    after = ["ftl 2026-12-05 15:11:05 step 40/120 loss 1.2"]
    kept = quiet.lines(4711, ["before"] + MUTEX_DUMP[:4])
    kept += quiet.lines(4711, MUTEX_DUMP[4:] + after) + quiet.lines(9, ["another process"])
    assert kept[0] == "before" and kept[2:] == after + ["another process"], kept
    assert kept[1].startswith("ftl: a Ray process (pid 4711) aborted in Ray's own code ('Mutex corrupt'")
    # Any other crash dump is printed as it is (a worker's own fault is the user's to see).
    segfault = ["*** SIGSEGV received at time=1 on cpu 0 ***", "Fatal Python error: Segmentation fault"]
    assert quiet.lines(12, segfault) == segfault


def test_rays_own_printer_is_wrapped() -> None:
    """On the dispatcher of the installed Ray (a Ray release that renames it fails here, not
    silently on users' consoles)."""
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    printed: list[dict[str, Any]] = []
    dispatcher.add_handler("ray_print_logs", printed.append)
    try:
        assert quiet_transient_ray_warnings()
        assert not quiet_transient_ray_warnings()  # wrapped once
        dispatcher.emit({"pid": 7, "is_err": True, "lines": WARNING})
        dispatcher.emit({"pid": 7, "is_err": True, "lines": ["a real error"]})
    finally:
        dispatcher.remove_handler("ray_print_logs")
    assert [data["lines"] for data in printed] == [[SAID], ["a real error"]]


def test_deepspeed_s_deprecated_gather_warning_is_kept_off_the_console() -> None:
    """Printed once per rank on every ZeRO run, about DeepSpeed's code (trial 38a)."""
    import warnings

    from trainer.logging_setup import quiet_third_party

    with warnings.catch_warnings(record=True) as seen:
        quiet_third_party(import_transformers=False)
        warnings.warn(
            "`torch.distributed.all_gather_into_tensor` is deprecated. Please use "
            "`torch.distributed.all_gather_single` instead.",
            FutureWarning,
            stacklevel=1,
        )
        warnings.warn("another deprecation", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in seen] == ["another deprecation"]


def test_a_placement_timeouts_traceback_is_dropped_for_ftls_own_line() -> None:
    """Trial 59b: 30 lines every 60 s while Ray could not place the workers; the failure policy's
    `ftl: Ray could not place the worker group in time ...` line (cluster/ray_stop_waiting.py) says it."""
    timeout = [
        "Error in control loop iteration: The worker group startup timed out after 5.0 seconds waiting for 2 "
        "workers. Potential causes include: (1) temporary insufficient cluster resources",
        "Traceback (most recent call last):",
        '  File "/x/ray/train/v2/_internal/execution/controller/controller.py", line 914, in _run_control_loop_iteration',
        "    result = await self._step()",
        "ray.train.v2._internal.exceptions.WorkerGroupStartupTimeoutError: The worker group startup timed out after "
        "5.0 seconds waiting for 2 workers.",
    ]
    said = "ftl: Ray could not place the worker group in time (...)"
    assert TransientWarningFilter().lines(7, [*timeout, said, *timeout, "next"]) == [said, "next"]
