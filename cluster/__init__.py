"""Where workers run (local processes, torchrun, Ray, Slurm). Knows ranks, processes, nodes and the
environment; knows nothing about models.

The middle layer: it never imports the launcher (tests/unit/test_import_layers.py). Each worker
calls the trainer's entry (`trainer.run`); beyond that, cluster uses the trainer's public modules for
stop requests (`trainer.stopping`), the checkpoint protocol (`trainer.checkpointing.protocol`), the
distributed helpers (`trainer.distributed`), the run directory's files and its config sections.
"""
