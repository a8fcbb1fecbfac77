"""Entry point of a run submitted as a Ray Job (`ftl submit`): the resolved config arrives in the
FTL_JOB_CONFIG environment variable; the run is driven with Ray Train on the job's cluster."""

from __future__ import annotations

import os
import sys
import tempfile

from trainer.errors import EXIT_INPUT_ERROR
from trainer.stopping import RESUME_COMMAND_ENV


def main() -> int:
    text = os.environ.get("FTL_JOB_CONFIG")
    if not text:
        print("launcher.job_entry: FTL_JOB_CONFIG is not set (this entry is started by `ftl submit`)", file=sys.stderr)
        return EXIT_INPUT_ERROR
    from launcher.cli import main as cli_main

    with tempfile.TemporaryDirectory(prefix="ftl-job-") as tmp:
        path = os.path.join(tmp, "config.yaml")
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
        # The job runs on a node of the Ray cluster: join that cluster (Ray Jobs gives its address
        # in RAY_ADDRESS; "auto" could pick another Ray instance on the same machine).
        address = os.environ.get("RAY_ADDRESS") or "auto"
        # A stopped or failed job is resumed by submitting it again (`ftl train` is what the job runs).
        os.environ[RESUME_COMMAND_ENV] = "submit the same config again (`ftl submit`)"
        return cli_main(["train", path, "cluster.backend=ray", f"cluster.ray.address={address}"])


if __name__ == "__main__":
    sys.exit(main())
