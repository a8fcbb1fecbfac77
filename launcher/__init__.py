"""What the user touches: the `ftl` CLI, config loading and validation, plan and doctor, submission
(Slurm, Ray Jobs), and reading run directories (runs, export, generate).

The top layer: launcher -> cluster -> trainer, nothing imports it back. It composes the run config
from the trainer's and cluster's config sections, hands the run to a cluster backend, and reads the
run directory the trainer wrote. `ftl plan` builds the trainer's own parts (model, method, strategy)
on the meta device, so its estimate counts exactly what a run would build. `launcher.cli` imports
nothing heavy at module level, so `ftl --help` is instant (tests/unit/test_import_layers.py).
"""
