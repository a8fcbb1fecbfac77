"""Where metrics go besides metrics.jsonl: TensorBoard (in the run directory) and the external
trackers MLflow and W&B (trackers.py), configured by the `tracking:` section."""
