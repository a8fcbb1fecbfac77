"""What runs inside each worker: model build, methods, data, loop, checkpoints, export.

Knows nothing about Ray or Slurm: it receives a validated config and a WorkerContext.
The entry point is `trainer.run.run(config, context)`.
"""
