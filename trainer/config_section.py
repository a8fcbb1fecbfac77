"""The base class of every config section (trainer, transfer and cluster sections alike).

Its own module so that any section's module can import it without importing the others
(trainer.config imports trainer.transfer.config, and cluster.config must not need either).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """Base for every config section: unknown keys are errors, assignments are re-validated, and
    numbers are finite (YAML's .inf / .nan passed every `gt=0` bound and crashed the run later)."""

    # protected_namespaces=(): a section may name a key model_* (pydantic reserves that prefix by default).
    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=(), allow_inf_nan=False)
