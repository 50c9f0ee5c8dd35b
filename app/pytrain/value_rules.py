"""Strict value rules: what a setting's text must look like before a runner writes it anywhere.

A runner passes values from the settings and from a task row's ``options`` to a cluster: Slurm
reads them from ``#SBATCH`` lines (:mod:`pytrain.slurm_values`), Ray from a job's resources and
runtime environment (:mod:`pytrain.ray_values`). Each value must match a strict pattern in full
(``re.fullmatch``) when the settings are read, when a task is submitted and claimed, and again
where the value is used. A :class:`ValueRule` is one such pattern with the words an error needs;
the rules that are the same for several runners (a memory size, a Python command) live here once.

This module imports only the standard library.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ValueRule:
    """What one setting's value must look like.

    Attributes:
        pattern: the whole value must match it (``re.fullmatch``).
        meaning: what it is, for the error (``"a partition name, or several separated by commas"``).
        example: a valid value.
    """

    pattern: str
    meaning: str
    example: str

    def check(self, value: Any) -> str:
        """``value`` if it is a string that matches; else ``ValueError`` saying what it must be."""
        if isinstance(value, str) and re.fullmatch(self.pattern, value):
            return value
        raise ValueError(f"must be {self.meaning}, e.g. {self.example!r} (pattern {self.pattern})")


#: A memory size: a whole number with an optional unit (sbatch ``--mem``; Ray's ``memory`` resource).
MEMORY_RULE = ValueRule(r"(0|[1-9][0-9]{0,9})[KMGT]?", "a memory size: a whole number with an optional unit K, M, G or T", "200G")
#: The Python that runs PyTrain on a cluster's nodes: a command name or a path, nothing a shell reads.
PYTHON_RULE = ValueRule(r"[A-Za-z0-9_/][A-Za-z0-9_./+-]{0,4095}", "a command name or a path, without white space or shell characters",
                        "/opt/venv/bin/python")
#: Bytes per unit of :data:`MEMORY_RULE` (no unit: megabytes, as sbatch reads ``--mem``).
MEMORY_UNITS = {"": 1 << 20, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def memory_bytes(value: str) -> int:
    """``"200G"`` -> bytes (:data:`MEMORY_UNITS`; a number without a unit is megabytes, as in sbatch).

    Raises:
        ValueError: ``value`` does not pass :data:`MEMORY_RULE`.
    """
    MEMORY_RULE.check(value)
    unit = value[-1] if value[-1] in "KMGT" else ""
    return int(value.removesuffix(unit)) * MEMORY_UNITS[unit]
