"""parallel.deepspeed_config, judged before anything starts: the file is there and is a JSON
object, and it changes nothing the run config decides (the rules are the workers':
trainer/deepspeed_json.py). Trial 59a: a missing file passed validate, plan and doctor
and failed 51 s into a Ray start; a contradicting one trained another ZeRO stage than the
checkpoint manifest and the plan said."""

from __future__ import annotations

from launcher.run_config import RunConfig


def deepspeed_config_problems(cfg: RunConfig) -> list[str]:
    path = cfg.parallel.deepspeed_config
    if not path or cfg.parallel.strategy != "deepspeed":
        return []  # another strategy with a JSON is the config schema's to refuse
    from trainer.deepspeed_json import generated_config, read_user_config, user_config_problems
    from trainer.errors import TrainerInputError

    try:
        user = read_user_config(path)
    except TrainerInputError as exc:
        return [str(exc)]
    # `auto` is resolved on the workers' device: judged here as no precision section, so a JSON
    # that switches bf16 or fp16 on is refused (the config is where precision is said).
    precision = None if cfg.parallel.mixed_precision == "auto" else cfg.parallel.mixed_precision
    generated = generated_config(cfg.training, cfg.parallel, cfg.cluster.world_size, precision)
    return user_config_problems(user, generated, path)
