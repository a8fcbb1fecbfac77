"""Entry point of a run submitted as a Ray Job (`ftl submit`): the resolved config arrives in the
FTL_JOB_CONFIG environment variable; the run is driven with Ray Train on the job's cluster."""

from __future__ import annotations

import os
import sys
import tempfile


def main() -> int:
    text = os.environ.get("FTL_JOB_CONFIG")
    if not text:
        print("launcher.job_entry: FTL_JOB_CONFIG is not set (this entry is started by `ftl submit`)", file=sys.stderr)
        return 2
    from launcher.cli import main as cli_main

    with tempfile.TemporaryDirectory(prefix="ftl-job-") as tmp:
        path = os.path.join(tmp, "config.yaml")
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
        # The job runs on a node of the Ray cluster: join that cluster rather than start one.
        return cli_main(["train", path, "cluster.backend=ray", "cluster.ray.address=auto"])


if __name__ == "__main__":
    sys.exit(main())
