"""torchrun's agent (`torch.distributed.run`) as ftl starts it: the same agent and arguments, but a
failed worker group ends with one line naming the rank and its exit code (the workers' own
output says why) instead of torchrun's traceback, and the agent exits with that worker's code
(a signal N as 128 + N), so a worker's input error (exit 2) reaches the launcher as 2.

    python -m cluster.torchrun_agent [torchrun arguments] -m cluster.worker RUN_DIR
"""

from __future__ import annotations

import sys

from trainer.errors import EXIT_INPUT_ERROR


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    try:
        run(parse_args(argv if argv is not None else sys.argv[1:]))
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        code = failure.exitcode if failure.exitcode > 0 else 128 - failure.exitcode
        if code != EXIT_INPUT_ERROR:  # an input error was printed by the worker itself
            print(f"torchrun: worker rank {rank} failed with exit code {failure.exitcode}", file=sys.stderr, flush=True)
        return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
