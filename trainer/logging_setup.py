"""Per-rank log files in the run directory (logs/rank-N.log), plus concise console output on rank 0."""

from __future__ import annotations

import logging
import os
import socket
import sys
import warnings
from pathlib import Path
from typing import Any

from trainer.console import stamp
from trainer.run_layout import RunLayout

FORMAT = "%(asctime)s %(levelname)s [rank %(rank)s] %(name)s: %(message)s"


def setup_worker_logging(run_dir: Path, rank: int) -> None:
    layout = RunLayout(run_dir)
    layout.logs.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    for handler in list(root.handlers):
        if getattr(handler, "_ftl", False):
            root.removeHandler(handler)
            handler.close()
        elif _writes_to_console(handler):
            # e.g. Ray Train's plain console handler in its workers: ftl's own (below) prints the
            # same records with their rank, and both would print every warning twice.
            root.removeHandler(handler)
    _drop_launcher_logging()  # a worker in the launcher's process (one local worker): its console says it
    rank_filter = _RankFilter(rank)
    file_handler = logging.FileHandler(layout.rank_log(rank), encoding="utf-8")
    file_handler.setFormatter(logging.Formatter(FORMAT))
    file_handler.addFilter(rank_filter)
    file_handler._ftl = True  # type: ignore[attr-defined]
    root.addHandler(file_handler)
    console = logging.StreamHandler(sys.stderr)
    # Console shows warnings from every rank but progress info only via the progress bar.
    console.setLevel(logging.WARNING)
    console.setFormatter(_ConsoleFormatter(FORMAT))
    console.addFilter(rank_filter)
    console._ftl = True  # type: ignore[attr-defined]
    root.addHandler(console)
    quiet_third_party()
    # Which process this rank is (local workers are forkserver children, Ray's are actors): to find one.
    logging.getLogger("trainer").info("rank %d: pid %d on %s", rank, os.getpid(), socket.gethostname())


def quiet_third_party(import_transformers: bool = True) -> None:
    """Keep the console for our progress bar and real problems, not libraries' chatter.

    import_transformers=False: a process that may never load a model (the launcher of workers
    elsewhere) does not pay transformers' import for this; if it imports it later, the
    environment default below still keeps it at errors only."""
    # kernels (a transformers dependency since 5.25) says at every bitsandbytes load, offline, that
    # it skips the hub's publisher check for the cached CPU kernel: chatter, not a problem.
    for noisy in ("httpx", "urllib3", "filelock", "bitsandbytes", "kernels"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    # MLflow sets its own loggers to INFO when imported, from this variable: "Creating initial MLflow
    # database tables..." reached the console of a run with a new SQLite store (trial 51a).
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    # peft still calls a transformers helper renamed in v5; harmless, but printed every run.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    # PEFT says it adapts GPT-2's Conv1D layers with their transposed weight layout, which it
    # sets itself: a note about its own correct choice, printed in the middle of plan and train.
    warnings.filterwarnings("ignore", message="fan_in_fan_out is set to False but the target module is `Conv1D`")
    # ftl asks PEFT to keep a tied head tied only when modules_to_save takes it (methods.py); PEFT finds
    # tied modules by name and, for GPT-2's `wte`, says none were added while the export stays tied
    # (trial 46b: the warning contradicted what the user asked for).
    warnings.filterwarnings("ignore", message="You have requested `ensure_weight_tying`, but no tied modules are added")
    # PEFT records the rank of a fused expert weight it adapts (Mixtral, Qwen3-MoE: target_parameters)
    # as a rank_pattern key, then says the key matched no module: false (the rank is applied), and
    # ftl sets no rank_pattern of its own (trial 58a: users read it as their rank being dropped).
    warnings.filterwarnings(
        "ignore", message="The following (rank|alpha)_pattern keys did not match any targeted module"
    )
    # DeepSpeed's ZeRO gathers call a torch.distributed name torch now deprecates: once per rank
    # on every ZeRO run, about DeepSpeed's code, not the user's (trials 38a, 41b: repeated 23x).
    warnings.filterwarnings(
        "ignore", message=".*(all_gather_into_tensor|reduce_scatter_tensor).* is deprecated", category=FutureWarning
    )
    if not import_transformers and "transformers" not in sys.modules:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # read when transformers sets up its logger
        return
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - transformers is a core dependency
        pass


OWN_PACKAGES = ("launcher", "cluster", "trainer")


class _ConsoleOfNow(logging.StreamHandler):  # type: ignore[type-arg]
    """A handler writing to whatever sys.stderr is when a record comes (a test's capture, or the
    terminal), not the stream it was made with."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:  # StreamHandler.__init__ sets it; sys.stderr is read at each write
        pass


def setup_launcher_logging() -> None:
    """The launcher's own warnings on its console, said as ftl's (`ftl: WARNING: ...`, as its
    printed warnings; trial 60b: the model check's "could not cache ..." came bare through Python's
    last-resort handler). On ftl's package loggers only: a library's records stay with their own
    handlers or Python's last resort, as before. Once per process; a worker run in this process
    takes them off (setup_worker_logging) for its own console handler."""
    for name in OWN_PACKAGES:
        logger = logging.getLogger(name)
        if any(getattr(handler, "_ftl_launcher", False) for handler in logger.handlers):
            continue
        console = _ConsoleOfNow()
        console.setLevel(logging.WARNING)
        console.setFormatter(logging.Formatter("ftl: %(levelname)s: %(message)s"))
        console._ftl_launcher = True  # type: ignore[attr-defined]
        logger.addHandler(console)


def _drop_launcher_logging() -> None:
    for name in OWN_PACKAGES:
        logger = logging.getLogger(name)
        for handler in [h for h in logger.handlers if getattr(h, "_ftl_launcher", False)]:
            logger.removeHandler(handler)


def warn_loudly(logger: logging.Logger, message: str) -> None:
    """A warning the user must see, once: through logging where a handler shows it on the console
    (a worker's, with its rank; its log file gets it too), else as ftl's own line (the launcher,
    e.g. `ftl export`, configures no logging)."""
    if any(_writes_to_console(handler) for handler in logging.getLogger().handlers):
        logger.warning(message)
    else:
        print(f"ftl: WARNING: {message}", file=sys.stderr, flush=True)


def _writes_to_console(handler: logging.Handler) -> bool:
    stream = getattr(handler, "stream", None)
    return (
        isinstance(handler, logging.StreamHandler)
        and not isinstance(handler, logging.FileHandler)
        and stream is not None
        and stream in (sys.stderr, sys.stdout, sys.__stderr__, sys.__stdout__)
    )


class _ConsoleFormatter(logging.Formatter):
    """ftl's own warnings on a worker's console as the run's other lines (`ftl TIME warning: ...`,
    with the rank when not 0), so one grep finds them all (trial 62a: a skipped-rows and a changed-data
    warning came as Python logging lines among ftl's); a library's keep its name, as FORMAT has it."""

    def format(self, record: logging.LogRecord) -> str:
        if record.name.split(".")[0] not in OWN_PACKAGES:
            return super().format(record)
        rank = getattr(record, "rank", 0)
        kind = record.levelname.lower() + (f" (rank {rank})" if rank else "")
        said = f"ftl {stamp(record.created)} {kind}: {record.getMessage()}"
        if record.exc_info:
            said += "\n" + self.formatException(record.exc_info)
        return said


class _RankFilter(logging.Filter):
    def __init__(self, rank: int):
        super().__init__()
        self.rank = rank

    def filter(self, record: logging.LogRecord) -> bool:
        record.rank = self.rank
        return True
