"""What the user touches: the `ftl` CLI, config loading and validation, run submission."""
