"""Slurm backend, submission side: render the sbatch script from its template, submit it, and
(for `ftl train` with cluster.backend=slurm) follow the job to its end.

What runs inside the allocation is cluster/slurm_job.py. Slurm is driven through its commands
(sbatch, scontrol), which every site has; no accounting database is assumed.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from string import Template
from typing import Any

from cluster.config import ClusterConfig, sbatch_path_problem
from cluster.errors import WorkerFailed
from cluster.results import clear_result, read_result, recorded_input_error, take_result
from cluster.signals import signal_name, signals_request_stop
from cluster.slurm_states import FINAL_STATES
from cluster.stderr_gone import say_to_stderr
from trainer.errors import EXIT_INPUT_ERROR, FtlError, InputError
from trainer.outcome import OutcomeKind
from trainer.run_layout import RunLayout

# The job cds here to run `python -m cluster.slurm_job`: the checkout, or site-packages when installed.
REPO = Path(__file__).resolve().parent.parent
# Package data (pyproject.toml), so an installed ftl renders it too, not only a checkout.
DEFAULT_TEMPLATE = Path(__file__).with_name("ftl.sbatch.template")
POLL_S = 2.0
FOLLOWED_ENV = "FTL_SLURM_FOLLOWED"


class SlurmError(FtlError):
    """sbatch/scontrol failed, or the job ended without finishing the run."""


class SlurmSettingRejected(InputError, SlurmError):
    """sbatch refused what the config asks for (a partition, account, QOS, time or node shape the
    cluster does not have), or the script cannot be rendered from it: exit 2 like any input error,
    from `ftl slurm` and from `ftl train` alike."""


class CancelledBeforeStart(SlurmError):
    """Ctrl-C (or SIGTERM) while the job still waited in the queue: it is cancelled; exit 128 + N,
    as for a stop before the run started on the other backends."""

    # Not a failure of the run (`ftl runs`: trial 45b listed a cancelled queued job's run as failed).
    nothing_ran = True

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


# sbatch's words when it refuses a setting (not when it cannot reach the cluster): "invalid
# partition specified", "Invalid account or account/partition combination", "Invalid qos
# specification", "Requested time limit is invalid", "Requested node configuration is not
# available", "unrecognized option" (cluster.slurm.extra_sbatch).
REJECTED_SETTING_WORDS = ("invalid", "requested node configuration", "unrecognized option", "not available")


def render_sbatch(run_dir: Path, cluster: ClusterConfig, python: str | None = None, workdir: Path | None = None) -> str:
    """Every placeholder is shell-quoted (shlex.quote leaves plain names as they are): the batch
    script is run by bash, and sbatch's own parser of #SBATCH lines removes the same quotes.
    Values that become #SBATCH directives were checked when the config was validated."""
    settings = cluster.slurm
    problem = sbatch_path_problem(str(run_dir))
    if problem:
        raise SlurmSettingRejected(f"output.dir {problem}")
    options = [f"--gpus-per-node={settings.gpus_per_node}"] if settings.gpus_per_node else []
    for flag, value in (
        ("partition", settings.partition),
        ("account", settings.account),
        ("qos", settings.qos),
        ("time", settings.time),
        # One task per node runs every worker of that node: its CPUs are the workers' (at least one each).
        ("cpus-per-task", (settings.cpus_per_task or 1) * cluster.workers),
        ("mem", settings.mem),
    ):
        if value is not None:
            options.append(f"--{flag}={value}")
    options += [opt if opt.startswith("-") else f"--{opt}" for opt in settings.extra_sbatch]
    template = Path(settings.template) if settings.template else DEFAULT_TEMPLATE
    if not template.is_file():
        raise SlurmSettingRejected(f"cluster.slurm.template: {template} does not exist")
    try:
        return Template(template.read_text()).substitute(
            run_dir=shlex.quote(str(run_dir)),
            job_name=shlex.quote(f"ftl-{run_dir.name}"),
            nodes=cluster.nodes,
            signal_before_s=settings.signal_before_s,
            requeue="--requeue" if settings.requeue else "--no-requeue",
            sbatch_options="\n".join(f"#SBATCH {opt}" for opt in options),
            setup="\n".join(settings.setup),
            workdir=shlex.quote(str(workdir or REPO)),
            python=shlex.quote(python or sys.executable),
        )
    except (KeyError, ValueError) as exc:
        raise SlurmSettingRejected(
            f"{template}: bad placeholder {exc}; the template may use $run_dir, $job_name, $nodes, "
            "$signal_before_s, $requeue, $sbatch_options, $setup, $workdir, $python"
        ) from None


# What sbatch says when this machine's Slurm client finds no cluster to talk to.
NO_CLUSTER = (
    "could not establish a configuration source",
    "unable to contact slurm controller",
    "connection refused",
    "unable to process configuration file",
    "cannot stat file",
)


def _no_cluster_hint(said: str) -> str:
    if not any(sign in said.lower() for sign in NO_CLUSTER):
        return ""
    return (
        "\nThis machine's Slurm client finds no cluster: on a Slurm login node, point SLURM_CONF at the "
        "cluster's slurm.conf (or ask its admins why slurmctld is unreachable); on a machine without "
        "Slurm, start a local one with scripts/slurm/start_local_slurm.sh and export SLURM_CONF as it "
        "says, or use another backend (cluster.backend=ray|local|torchrun)"
    )


def _partitions_hint(said: str) -> str:
    if "invalid partition" not in said.lower():
        return ""
    out = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True)
    names = " ".join(out.stdout.split()) if out.returncode == 0 else ""
    return f"\nthis cluster's partitions (sinfo; * = default): {names}; set cluster.slurm.partition" if names else ""


def sbatch_refusal(what: str, said: str) -> SlurmError:
    """The error for an sbatch that failed: an input error naming the ftl key when sbatch refused a
    setting, a failure (with what to set up) when it found no cluster."""
    no_cluster = _no_cluster_hint(said)
    message = f"{what} failed: {said}{no_cluster}{_partitions_hint(said)}{_key_hint(said)}"
    if no_cluster:
        # Its first line is what `ftl runs` shows (trial 47a: sbatch's DNS lookup noise).
        message = f"{what} failed: no Slurm cluster found; sbatch said:\n{said}{no_cluster}"
    if any(word in said.lower() for word in REJECTED_SETTING_WORDS) and not no_cluster:
        return SlurmSettingRejected(message)
    return SlurmError(message)


def _key_hint(said: str) -> str:
    lowered = said.lower()
    for words, key in (
        (("--time", "time limit"), "cluster.slurm.time"),
        (("--mem", "memory specification"), "cluster.slurm.mem"),  # before "node configuration" (trial 64d)
        (("account",), "cluster.slurm.account"),
        (("qos",), "cluster.slurm.qos"),
        # cpus_per_task multiplies the CPUs a node is asked for (trial 64a: left out of the hint).
        (
            ("node configuration", "node count", "cpu count"),
            "cluster.nodes, cluster.workers, cluster.slurm.gpus_per_node, cluster.slurm.cpus_per_task",
        ),
        (("unrecognized option",), "cluster.slurm.extra_sbatch"),
    ):
        if any(word in lowered for word in words):
            return f"\n(set {key})"
    return ""


def check_slurm_client() -> None:
    """Before anything is written: a Slurm client that cannot work fails at once, naming what
    to fix (sbatch with a SLURM_CONF that does not exist retries for 60 s, then says only
    "Unable to process configuration file")."""
    if shutil.which("sbatch") is None:
        raise SlurmError(
            "sbatch not found: run this on a Slurm login node (or start a local Slurm with "
            "scripts/slurm/start_local_slurm.sh and export SLURM_CONF)"
        )
    conf = os.environ.get("SLURM_CONF")
    if conf and not Path(conf).is_file():
        raise SlurmError(
            f"SLURM_CONF={conf}: no such file. Point SLURM_CONF at the cluster's slurm.conf (on a login node "
            "usually unset, or /etc/slurm/slurm.conf), or unset it; for a local Slurm on this machine run "
            "scripts/slurm/start_local_slurm.sh and export the SLURM_CONF it prints"
        )


def queue_warnings(cluster: ClusterConfig) -> list[str]:
    """What this Slurm (sinfo) says the job would wait on for ever: a partition it does not have, more
    nodes than the partition holds. sbatch accepts the latter and the job pends with PartitionConfig
    (trial 64a: `--nodes 3` on two nodes, exit 0 and a job that never started). Warnings, not
    refusals: a dry run may be rendered for another cluster, and a partition can grow. [] when sinfo
    cannot tell."""
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%P %D"], capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.SubprocessError):
        return []
    if out.returncode != 0:
        return []
    nodes: dict[str, int] = {}
    default = None
    for line in out.stdout.splitlines():
        name, _, count = line.strip().partition(" ")
        if not count.strip().isdigit():
            continue
        if name.endswith("*"):
            name = default = name[:-1]
        nodes[name] = nodes.get(name, 0) + int(count)  # a partition's nodes are listed by state
    asked = cluster.slurm.partition
    if asked and "," not in asked and asked not in nodes:
        listed = ", ".join(f"{name}{'*' if name == default else ''}" for name in nodes)
        return [
            f"cluster.slurm.partition={asked!r}: this Slurm has no such partition (sinfo; * = default): {listed}; "
            "set cluster.slurm.partition"
        ]
    partition = asked or default
    held = nodes.get(partition or "")
    if held is not None and cluster.nodes > held:
        return [
            f"cluster.nodes={cluster.nodes}, but partition {partition} has {held} node(s): the job would wait until it "
            f"has {cluster.nodes} (perhaps never); lower cluster.nodes or pick another cluster.slurm.partition"
        ]
    return []


def submit(run_dir: Path, cluster: ClusterConfig, followed: bool = False) -> str:
    """Write the rendered script into the run directory and sbatch it; returns the job id.
    followed: `ftl train` waits for the job and shows its end itself (summary, report), so the
    job does not (sbatch passes the environment on: FOLLOWED_ENV)."""
    check_slurm_client()
    layout = RunLayout(run_dir)
    layout.logs.mkdir(parents=True, exist_ok=True)
    script = layout.slurm_script
    script.write_text(render_sbatch(run_dir, cluster))
    env = dict(os.environ, **({FOLLOWED_ENV: "1"} if followed else {}))
    out = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise sbatch_refusal(f"sbatch {script}", out.stderr.strip() or out.stdout.strip())
    job_id = out.stdout.strip().split(";")[0]
    layout.slurm_job_id.write_text(job_id + "\n")
    from cluster.run_lock import hand_over_to_slurm_job

    hand_over_to_slurm_job(run_dir, job_id)  # the job holds the run directory's lock from now on
    return job_id


def job_info(job_id: str) -> dict[str, str]:
    """`scontrol show job` as a dict (works without Slurm accounting); {} once Slurm forgot it."""
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True)
    if out.returncode != 0:
        return {}
    return dict(field.split("=", 1) for field in out.stdout.split() if "=" in field)


def submit_and_wait(run_dir: Path, cluster: ClusterConfig) -> dict[str, Any]:
    """`ftl train` on Slurm: submit, stream the job's log, return the run summary. Survives the
    job's own requeues (preemption, time limit) and waits for the run to really end."""
    clear_result(run_dir)
    job_id = submit(run_dir, cluster, followed=True)
    log_path = RunLayout(run_dir).slurm_log(job_id)
    say_to_stderr(f"ftl: submitted Slurm job {job_id}; log {log_path}\n")
    shown = 0

    def cancel() -> None:
        subprocess.run(["scancel", job_id], check=False)

    said_reason, cancelled_pending, state = "", False, "PENDING"
    # Only a stop asked here: a stop request file the job wrote itself (preemption) is followed by
    # a requeue, and that job is PENDING again on purpose.
    stop_asked: list[bool] = []
    stop_signal: list[int] = []

    def notice(signum: int) -> str | None:
        stop_signal.append(signum)
        if state != "PENDING":
            return None
        return (
            f"{signal_name(signum)}: Slurm job {job_id} has not started; cancelling it (nothing ran, nothing to "
            "checkpoint)"
        )

    with signals_request_stop(
        run_dir, force_quit=cancel, on_request=lambda: stop_asked.append(True), first_notice=notice
    ):
        while True:
            shown = _stream_new(log_path, shown)
            info = job_info(job_id)
            state = info.get("JobState", "UNKNOWN")
            if state in FINAL_STATES or state == "UNKNOWN":
                break
            if state == "PENDING":
                if stop_asked and not cancelled_pending:
                    cancel()  # nothing runs yet: nothing to checkpoint, and it would start only to stop
                    cancelled_pending = True
                reason = info.get("Reason", "None")
                if reason not in ("None", said_reason):
                    say_to_stderr(f"ftl: Slurm job {job_id} is waiting to start ({reason}){_pending_hint(reason)}\n")
                    said_reason = reason
            time.sleep(POLL_S)
    _stream_new(log_path, shown)
    if cancelled_pending and state in ("CANCELLED", "UNKNOWN"):
        raise CancelledBeforeStart(
            f"stopped before Slurm job {job_id} started: it is cancelled (nothing ran); run the same "
            "command again to submit it anew",
            stop_signal[0] if stop_signal else signal.SIGINT,
        )
    error = recorded_input_error(run_dir)
    if error is not None:  # its message is in the log just shown
        raise WorkerFailed(None, EXIT_INPUT_ERROR, log_path, who=f"Slurm job {job_id}", input_error=error)
    if state != "COMPLETED" and read_result(run_dir).kind is not OutcomeKind.STOPPED:
        reason = info.get("Reason", "None")
        why = f" ({reason})" if reason not in ("None", "") else ""
        if not log_path.exists():  # e.g. the job's user cannot write the run directory (JobLaunchFailure)
            raise SlurmError(
                f"Slurm job {job_id} ended {state}{why} without writing its log {log_path}: check that the job's "
                f"user can write {run_dir} on the nodes (scontrol show job {job_id}; the node's slurmd log says more)"
            )
        raise SlurmError(f"Slurm job {job_id} ended {state}{why}; see {log_path}")
    return take_result(run_dir)  # a stop (Ctrl-C here, a cancel there) raises StopRequested: 130 / 143


# Why a job waits (squeue's REASON) when the wait may never end: what in ftl's config to look at.
PENDING_HINTS = {
    "PartitionNodeLimit": "more nodes than the partition has up or allows: check cluster.nodes (`sinfo`)",
    # Trial 64a: --nodes 3 on a 2-node partition waited for ever with no hint.
    "PartitionConfig": "more nodes, CPUs or memory than the partition has: check cluster.nodes and cluster.slurm "
    "(`sinfo -o '%P %D %c %m'`)",
    "PartitionTimeLimit": "cluster.slurm.time is over the partition's limit",
    "PartitionDown": "the partition is down",
    "ReqNodeNotAvail": "the nodes it needs are down, drained or reserved",
    "InvalidAccount": "check cluster.slurm.account",
    "InvalidQOS": "check cluster.slurm.qos",
    "BadConstraints": "no node has what it asks for: check cluster.slurm (gpus_per_node, cpus_per_task, mem)",
}


def _pending_hint(reason: str) -> str:
    hint = PENDING_HINTS.get(reason.split(",")[0].strip("()"), "")
    if not hint and not reason.startswith("Assoc"):
        return ""  # Resources, Priority, Dependency...: a queue's ordinary wait
    hint = hint or "an account or QOS limit of yours (sacctmgr show assoc)"
    return f": {hint}; it may never start (Ctrl-C cancels it)"


def _stream_new(path: Path, shown: int) -> int:
    if not path.exists():
        return shown
    with path.open("rb") as handle:
        handle.seek(shown)
        chunk = handle.read()
    if chunk:  # a reader of ftl's output that has gone must not end the following (trial 64d)
        say_to_stderr(chunk.decode(errors="replace"))
    return shown + len(chunk)
