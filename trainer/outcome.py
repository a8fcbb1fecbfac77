"""A worker group's outcome, as rank 0 records it in the run directory (`.worker-result.json`) for
the launchers: finished (with the run summary), stopped at a step boundary with a checkpoint, or an
input error (a bad data row, a bad checkpoint: the message for the user). No file, or one that
cannot be read, means the workers were killed or failed before they could say (NO_RESULT).

The file works across processes, Ray actors and nodes alike, since every backend needs the run
directory shared anyway. It is written atomically; reading tolerates a missing or torn file and
says which it was.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Any

from trainer.checkpointing.protocol import atomic_write_text
from trainer.errors import FtlError, TrainerInputError
from trainer.run_layout import RunLayout
from trainer.stopping import StopRequested


class NoResult(FtlError):
    """The workers exited without a result: they were killed or failed before finishing."""


class OutcomeKind(enum.Enum):
    FINISHED = "finished"
    STOPPED = "stopped"
    INPUT_ERROR = "input error"
    NO_RESULT = "no result"  # never written: what reading finds when the workers left nothing usable


@dataclass(frozen=True)
class Outcome:
    kind: OutcomeKind
    summary: dict[str, Any] | None = None  # FINISHED: the run summary
    step: int | None = None  # STOPPED: where, with which checkpoint, on which signal
    checkpoint: str | None = None
    signum: int | None = None
    message: str | None = None  # INPUT_ERROR: the error for the user; NO_RESULT: why there is none
    # Which launcher started the rank that wrote it ("host:pid"; None when it was none of ftl's own): of
    # several launchers (one per torchrun node) only that one writes the end-of-run report.
    launcher: str | None = None

    @classmethod
    def finished(cls, summary: dict[str, Any]) -> Outcome:
        return cls(OutcomeKind.FINISHED, summary=summary)

    @classmethod
    def stopped(cls, stop: StopRequested) -> Outcome:
        return cls(OutcomeKind.STOPPED, step=stop.step, checkpoint=stop.checkpoint, signum=stop.signum)

    @classmethod
    def input_error(cls, message: str) -> Outcome:
        return cls(OutcomeKind.INPUT_ERROR, message=message)

    def to_json(self) -> str:
        # The same shape ftl has always written, so launchers and workers of neighbouring versions agree.
        started_by = {"launcher": self.launcher} if self.launcher else {}
        if self.kind is OutcomeKind.FINISHED:
            return json.dumps({"stopped": False, "summary": self.summary, **started_by})
        if self.kind is OutcomeKind.STOPPED:
            return json.dumps(
                {"stopped": True, "step": self.step, "checkpoint": self.checkpoint, "signum": self.signum, **started_by}
            )
        assert self.kind is OutcomeKind.INPUT_ERROR, f"a {self.kind.value} outcome is never written"
        return json.dumps({"error": self.message, **started_by})

    @classmethod
    def from_json(cls, text: str) -> Outcome:
        """Never raises: text that is not a whole outcome is a NO_RESULT saying so."""
        try:
            record = json.loads(text)
            launcher = record.get("launcher")
            launcher = str(launcher) if launcher else None
            if "error" in record:
                return cls(OutcomeKind.INPUT_ERROR, message=str(record["error"]), launcher=launcher)
            if record.get("stopped"):
                return cls(
                    OutcomeKind.STOPPED,
                    step=int(record["step"]),
                    checkpoint=str(record["checkpoint"]),
                    signum=record.get("signum"),
                    launcher=launcher,
                )
            return cls(OutcomeKind.FINISHED, summary=dict(record["summary"]), launcher=launcher)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            return cls(OutcomeKind.NO_RESULT, message=f"unreadable ({type(exc).__name__}: {exc})")

    def write(self, layout: RunLayout) -> None:
        atomic_write_text(layout.worker_result, self.to_json())

    @classmethod
    def read(cls, layout: RunLayout) -> Outcome:
        try:
            text = layout.worker_result.read_text()
        except FileNotFoundError:
            return cls(OutcomeKind.NO_RESULT, message="missing")
        except OSError as exc:
            return cls(OutcomeKind.NO_RESULT, message=f"unreadable ({exc})")
        return cls.from_json(text)

    def summary_or_raise(self, layout: RunLayout) -> dict[str, Any]:
        """The run summary; else the error the outcome stands for (StopRequested, TrainerInputError, NoResult)."""
        if self.kind is OutcomeKind.FINISHED:
            assert self.summary is not None
            return self.summary
        if self.kind is OutcomeKind.STOPPED:
            assert self.step is not None and self.checkpoint is not None
            raise StopRequested(self.step, self.checkpoint, self.signum)
        if self.kind is OutcomeKind.INPUT_ERROR:
            raise TrainerInputError(self.message)
        where = "" if self.message == "missing" else f" (its result file {layout.worker_result} is {self.message})"
        raise NoResult(f"the workers left no result in {layout.root}{where}; see {layout.logs}")
