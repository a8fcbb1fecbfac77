"""What runs inside each worker: model build, methods, data, loop, checkpoints, export.

The bottom layer: it imports neither the launcher nor the cluster (tests/unit/test_import_layers.py)
and knows nothing about Ray or Slurm: it receives a validated config and a WorkerContext. The entry
point is `trainer.run.run(config, context)`; the layers above use its public modules too (the
launcher's plan builds its model, method and strategy on the meta device; cluster uses its stop
requests, checkpoint protocol and distributed helpers).
"""
