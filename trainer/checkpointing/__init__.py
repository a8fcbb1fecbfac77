"""Crash-consistent checkpoints: commit protocol (protocol.py), retention, per-strategy state
layouts (layouts.py, sharded.py for FSDP2/DCP, deepspeed_state.py for ZeRO), the manager a
running trainer uses (manager.py), resume compatibility (compat.py), preflight checks."""
