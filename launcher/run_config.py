"""The run config: the trainer's sections plus the cluster section, as one validated tree.
Rules that span trainer and cluster settings live here."""

from __future__ import annotations

from pydantic import Field, model_validator

from cluster.config import ClusterConfig, sbatch_path_problem
from trainer.config import TrainerConfig
from trainer.optim_rules import in_backward_problem

SHARDED = ("fsdp", "deepspeed")
# URI schemes pyarrow.fs opens (what Ray Train storage accepts without a custom filesystem).
STORAGE_SCHEMES = ("s3", "gs", "gcs", "abfs", "abfss", "hdfs", "viewfs", "file")


class RunConfig(TrainerConfig):
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)

    @model_validator(mode="after")
    def _parallel_fits_cluster(self) -> "RunConfig":
        strategy, workers = self.parallel.strategy, self.cluster.world_size
        if strategy == "none" and workers > 1:
            raise ValueError(f"parallel.strategy=none runs one process but the cluster has {workers} workers; use ddp, fsdp or deepspeed")
        parallel = self.parallel
        if parallel.mixed_precision == "fp16" and strategy != "deepspeed":
            raise ValueError("parallel.mixed_precision=fp16 needs dynamic loss scaling, which ftl gets from DeepSpeed: "
                             "use bf16, or parallel.strategy=deepspeed")
        if parallel.offload_optimizer != "none" and strategy != "deepspeed":
            raise ValueError("parallel.offload_optimizer needs parallel.strategy=deepspeed "
                             "(with fsdp, parallel.offload_params=cpu offloads parameters, gradients and the optimizer step)")
        if parallel.offload_params != "none":
            if strategy == "deepspeed" and parallel.zero_stage != 3:
                raise ValueError("parallel.offload_params needs parallel.zero_stage=3 (ZeRO-1/2 do not partition parameters); "
                                 "use offload_optimizer with stages 1-2")
            if strategy == "fsdp" and parallel.offload_params != "cpu":
                raise ValueError("parallel.offload_params: fsdp offloads to cpu only; use deepspeed ZeRO-3 for nvme")
            if strategy not in SHARDED:
                raise ValueError("parallel.offload_params needs parallel.strategy=fsdp or deepspeed")
        if self.training.optimizer_in_backward and strategy == "auto" and workers > 1:
            problem = in_backward_problem(self.training, "ddp")  # what auto resolves to on several workers
            if problem:
                raise ValueError(f"{problem} (parallel.strategy=auto is ddp on {workers} workers)")
        if "nvme" in (parallel.offload_params, parallel.offload_optimizer) and not parallel.nvme_path:
            raise ValueError("parallel.nvme_path is required for nvme offload (a directory on a fast local disk)")
        return self

    @model_validator(mode="after")
    def _uri_output_needs_ray(self) -> "RunConfig":
        uri = self.output.dir
        if "://" not in uri:
            return self
        scheme = uri.split("://", 1)[0].lower()
        if scheme not in STORAGE_SCHEMES:
            raise ValueError(f"output.dir {uri!r}: {scheme}:// is not a storage ftl can use; use a path, or one of "
                             + ", ".join(f"{s}://" for s in STORAGE_SCHEMES))
        if self.cluster.backend != "ray":
            raise ValueError(f"output.dir {uri!r} is an object-store URI, which ftl stores through Ray Train "
                             f"(cluster.backend=ray); with cluster.backend={self.cluster.backend} use a path on a "
                             "filesystem every worker mounts")
        return self

    @model_validator(mode="after")
    def _slurm_run_dir_fits_sbatch(self) -> "RunConfig":
        problem = sbatch_path_problem(self.output.dir) if self.cluster.backend == "slurm" else None
        if problem:
            raise ValueError(f"output.dir {problem}")
        return self
