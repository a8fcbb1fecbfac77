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
