"""What every way of starting a run (`ftl train`, `ftl slurm`, `ftl submit`) checks before a
backend starts or a job is queued: inputs that exist, a data file that fits data.format, target
modules the model has, a model the offline hub cache holds. Trial 45b: `ftl slurm` checked only the
first, and a typo in target_modules failed the job once it had its nodes."""

from __future__ import annotations

import os

from launcher.run_config import RunConfig


def problems_before_start(cfg: RunConfig, inputs: bool = True) -> list[str]:
    """Each problem as one line. `inputs=False`: leave out the existence of the model and data
    paths (`ftl submit`: the cluster may see other files; the rest is checked where the files are here)."""
    from launcher.data_format_probe import data_format_problems
    from launcher.hub_cache import unavailable_offline
    from launcher.preflight import check_inputs

    problems = check_inputs(cfg) if inputs else []
    if inputs:  # an output.dir on object storage, looked at once (a cluster may reach other storage)
        from launcher.hub_datasets import hub_dataset_problems
        from launcher.run_dir import storage_problems

        problems += storage_problems(cfg) + hub_dataset_problems(cfg)
        from cluster.gpu_probe import local_ray_shortfall

        shortfall = local_ray_shortfall(cfg.cluster)  # `ftl slurm` runs Ray inside the job: not this machine
        problems += [shortfall] if shortfall else []
        address = cfg.cluster.ray.address or os.environ.get("RAY_ADDRESS")
        if cfg.cluster.backend == "ray" and address and "RAY_JOB_CONFIG_JSON_ENV_VAR" not in os.environ:
            from cluster.ray_driver import silent_address_problem

            silent = silent_address_problem(address)
            problems += [silent] if silent else []
    said = {problem.split(":")[0] for problem in problems}  # one problem a key (a short name: not also "not cached")
    problems += [p for p in unavailable_offline(cfg) if p.split(":")[0] not in said] + data_format_problems(cfg)
    return problems + model_problems(cfg)


def model_problems(cfg: RunConfig) -> list[str]:
    """The model's own limits, from its config.json and weights' headers (target modules, freezing,
    positions, attention): the workers found them after loading it (trials 39a, 46b). Also validate's."""
    from launcher.plan.planner import attention_refusal
    from launcher.preflight import freeze_problem, position_problem, target_modules_problem

    found = (target_modules_problem(cfg), freeze_problem(cfg), position_problem(cfg), attention_refusal(cfg))
    return [problem for problem in found if problem]
