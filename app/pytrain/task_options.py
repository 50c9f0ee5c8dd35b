"""The task row's ``options``: training settings beyond the table's columns, typed and defaulted.

A task row's ``options`` column (a JSON object, default ``{}``) becomes ``TaskSpec.extra`` in
``task.json``; :class:`TrainConfig` is the one definition of its keys, their types and defaults.
``pytrain submit`` and the orchestrator (at claim time, before any process starts) check a row's
options with :meth:`TrainConfig.from_options`, so a misspelt key or a wrong type fails the task
with the key named instead of being ignored. This module imports nothing heavy (the orchestrator
image has no torch).

Example::

    INSERT INTO training_tasks (model_name, sources, classes, options)
    VALUES ('kitchen', '{dataset1}', '{cooking,drinking}', '{"cache": false, "class_weights": "balanced"}');
"""

from __future__ import annotations

import operator
from dataclasses import asdict, dataclass, field, fields
from typing import Annotated, Any

from pytrain.errors import ConfigurationError

#: ``options`` keys read by a runner or the orchestrator, not by training (:func:`check_options`
#: checks them; training skips them): ``slurm`` and ``ray`` hold per-task overrides of the
#: ``PYTRAIN_SLURM_*`` and ``PYTRAIN_RAY_*`` settings (:func:`slurm_overrides`, :func:`ray_overrides`); ``experiment`` names the MLflow experiment of the task's runs
#: (default: the model name; :mod:`pytrain.tracking`); ``sweep`` and ``trial`` name the sweep and
#: trial number of a sweep's trial (written by :mod:`pytrain.sweeps`; MLflow tags ``pytrain.sweep``/``pytrain.trial``).
RUNNER_OPTIONS = ("slurm", "ray", "experiment", "sweep", "trial")
#: The longest ``experiment`` option (MLflow's experiment names are free text; this keeps them sane).
MAX_EXPERIMENT_CHARS = 255
#: Cluster-runner settings a task may not override (where the cluster is and where its Python is are
#: the cluster's business, not the task's).
_NOT_PER_TASK = ("slurm_python", "ray_python", "ray_address")
#: How errors name each cluster runner, and an example of its ``options`` object.
_RUNNER_TITLES = {"slurm": "Slurm", "ray": "Ray"}
_OVERRIDE_EXAMPLES = {"slurm": '{"slurm": {"partition": "gpu"}}', "ray": '{"ray": {"gpus_per_node": 1}}'}

#: ``TrainConfig.class_weights``: how the loss weighs the classes.
CLASS_WEIGHTS = ("none", "balanced")


def balanced_class_weights(counts: list[int]) -> list[float]:
    """``n / (classes * n_c)`` per class (scikit-learn's "balanced"); a class without clips gets 0.

    Example: counts ``[40, 4]`` -> ``[0.55, 5.5]``.
    """
    total, k = sum(counts), len(counts)
    return [total / (k * n) if n else 0.0 for n in counts]


#: Bound keywords (pydantic ``Field``'s names) -> the comparison and how an error spells it.
_BOUNDS = {"ge": (operator.ge, ">="), "gt": (operator.gt, ">"), "le": (operator.le, "<="), "lt": (operator.lt, "<")}


def _bounded(default: float, **bounds: float) -> Any:
    """A numeric :class:`TrainConfig` field whose value must satisfy ``bounds`` (``ge``, ``gt``, ``le``,
    ``lt``: pydantic's keywords). Plain dataclass metadata, not pydantic: training imports this
    module and runs on bare GPU hosts without pydantic."""
    return field(default=default, metadata={"bounds": bounds})


def _range_text(bounds: dict[str, float]) -> str:
    """``{"ge": 0, "lt": 1}`` -> ``">= 0 and < 1"``."""
    return " and ".join(f"{_BOUNDS[name][1]} {limit:g}" for name, limit in bounds.items())


@dataclass(frozen=True)
class TrainConfig:
    """Training settings from the task row's ``options`` (``TaskSpec.extra``).

    Attributes:
        weight_decay: AdamW weight decay (decoupled, Loshchilov & Hutter 2019).
        label_smoothing: of the cross-entropy loss.
        warmup_epochs: linear learning-rate warm-up, in epochs (fractions allowed).
        min_lr_ratio: the cosine schedule ends at ``learning_rate * min_lr_ratio``.
        patience: stop after this many epochs without a lower monitored loss (the validation loss;
            the training loss when there are no val clips; see ``pytrain.training.train.EarlyStopping``).
        grad_clip: max gradient L2 norm (0 turns clipping off).
        dropout: before the classifier (``tiny`` and per-frame models).
        temporal_head: ``mean`` or ``gru`` (per-frame models).
        augment: random resized crop + flip in training.
        hflip: probability of a horizontal flip when ``augment``.
        crop_scale_min: smallest crop area fraction when ``augment``.
        cache: read and fill the host's shared decoded-clip cache (``PYTRAIN_CLIP_CACHE_DIR``,
            :mod:`pytrain.training.clip_cache`): later epochs, and later tasks on the same clips with
            the same clip settings, decode nothing. On by default; ``false`` decodes every clip every
            epoch (the same frames: the cache changes no result).
        cache_pool_factor: frames per video that ``uniform`` training jitter draws from (the cached
            pool), as a multiple of ``num_frames``.
        decode_timeout_s: seconds a file may take in the pre-scan (and a DataLoader batch with
            workers) before its decoder is considered hung.
        class_weights: ``none``, or ``balanced`` for imbalanced data: the cross-entropy weighs
            class ``c`` by ``n_train / (classes * n_c)`` (its training clips ``n_c``), so every
            class counts the same in the loss (:func:`balanced_class_weights`).

    Every number has a range (``_bounded``; the error names the option and the range): fractions
    and probabilities within 0..1, counts at least 1, time spans positive.
    """

    weight_decay: float = _bounded(0.05, ge=0, le=1)
    label_smoothing: float = _bounded(0.1, ge=0, lt=1)  # 1 would make every target uniform
    warmup_epochs: float = _bounded(1.0, ge=0, le=100_000)  # the epochs column's upper bound
    min_lr_ratio: float = _bounded(0.01, ge=0, le=1)
    patience: int = _bounded(10, ge=1, le=100_000)
    grad_clip: float = _bounded(1.0, ge=0, le=1000)  # 0: no clipping
    dropout: float = _bounded(0.2, ge=0, lt=1)  # 1 would drop every feature
    temporal_head: str = "mean"
    augment: bool = True
    hflip: float = _bounded(0.5, ge=0, le=1)
    crop_scale_min: float = _bounded(0.6, gt=0, le=1)
    cache: bool = True
    cache_pool_factor: int = _bounded(2, ge=1, le=64)
    decode_timeout_s: float = _bounded(60.0, gt=0, le=86_400)
    class_weights: str = "none"

    def __post_init__(self) -> None:
        for option in fields(self):
            bounds = option.metadata.get("bounds", {})
            value = getattr(self, option.name)
            if not all(_BOUNDS[name][0](value, limit) for name, limit in bounds.items()):  # NaN fails every one
                raise ConfigurationError(f"task option {option.name}={value!r} is out of range: it must be {_range_text(bounds)}",
                                         hint=f"e.g. {{\"{option.name}\": {_json(option.default)}}}")
        if self.class_weights not in CLASS_WEIGHTS:
            raise ConfigurationError(f"task option class_weights={self.class_weights!r} is not known", hint=f"use one of {CLASS_WEIGHTS}")

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> "TrainConfig":
        """Check and type a row's ``options`` (JSON numbers may be ints where floats are meant).

        Raises:
            ConfigurationError: ``options`` is not an object, a key is not a setting (the known
                keys are listed), a value has the wrong type, or a number is out of its range
                (the option and the range named).
        """
        if not isinstance(options, dict):
            raise ConfigurationError(f"task options {options!r} is not a JSON object", hint='use e.g. {"cache": true}')
        known = {f.name for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in options.items():
            if key in RUNNER_OPTIONS:
                continue
            if key not in known:
                raise ConfigurationError(f"task option {key!r} is not known",
                                         hint=f"known options: {', '.join(sorted((*known, *RUNNER_OPTIONS)))}")
            default = getattr(cls, key)
            if isinstance(default, bool):
                ok = isinstance(value, bool)
            elif isinstance(default, float):
                ok = isinstance(value, (int, float)) and not isinstance(value, bool)
                value = float(value) if ok else value
            else:
                ok = isinstance(value, type(default)) and not isinstance(value, bool)
            if not ok:
                raise ConfigurationError(f"task option {key}={value!r} should be a {type(default).__name__}",
                                         hint=f"e.g. {{\"{key}\": {_json(default)}}}")
            values[key] = value
        return cls(**values)

    def to_options(self) -> dict[str, Any]:
        """Every setting as a JSON-ready dict (``metrics.json`` records it)."""
        return asdict(self)


def runner_overrides(options: dict[str, Any], runner: str) -> dict[str, Any]:
    """A task's overrides of a cluster runner's settings: ``options[runner]`` as
    ``{"<runner>_<key>": value}``, each value checked against that setting's type, bounds and rule
    (:mod:`pytrain.slurm_values`, :mod:`pytrain.ray_values`) in strict mode.

    Example: ``runner_overrides({"slurm": {"partition": "h100", "gpus_per_node": 8}}, "slurm")`` ->
    ``{"slurm_partition": "h100", "slurm_gpus_per_node": 8}``.

    The keys and their types are the settings' ``<runner>_*`` fields (:class:`pytrain.settings.Settings`,
    imported here only: training never calls this), less those in :data:`_NOT_PER_TASK`.

    Args:
        options: the row's options.
        runner: ``"slurm"`` or ``"ray"`` (a key of :data:`RUNNER_OPTIONS` with settings of that prefix).

    Raises:
        ConfigurationError: ``options[runner]`` is not an object, names no such setting, or a value
            does not fit the setting.
    """
    from pydantic import TypeAdapter, ValidationError

    from pytrain.settings import Settings

    prefix = f"{runner}_"
    given = options.get(runner, {})
    per_task = {name.removeprefix(prefix): field for name, field in Settings.model_fields.items()
                if name.startswith(prefix) and name not in _NOT_PER_TASK}
    if not isinstance(given, dict):
        raise ConfigurationError(f"task option {runner}={given!r} is not a JSON object", hint=f"e.g. {_OVERRIDE_EXAMPLES[runner]}")
    overrides: dict[str, Any] = {}
    for key, value in given.items():
        if key not in per_task:
            raise ConfigurationError(f"task option {runner}.{key} is not a {_RUNNER_TITLES[runner]} setting",
                                     hint=f"known: {', '.join(sorted(per_task))}")
        setting = per_task[key]
        try:
            kind = Annotated[setting.annotation, *setting.metadata] if setting.metadata else setting.annotation
            overrides[f"{prefix}{key}"] = TypeAdapter(kind).validate_python(value, strict=True)
        except ValidationError as exc:
            why = exc.errors()[0]["msg"].removeprefix("Value error, ")
            raise ConfigurationError(f"task option {runner}.{key}={value!r}: {why}",
                                     hint=f"PYTRAIN_{prefix.upper()}{key.upper()}: {setting.description}") from None
    return overrides


def slurm_overrides(options: dict[str, Any]) -> dict[str, Any]:
    """The task's overrides of the ``PYTRAIN_SLURM_*`` settings (:func:`runner_overrides`).

    Example: ``{"slurm": {"partition": "h100", "gpus_per_node": 8, "mem": "200G"}}`` ->
    ``{"slurm_partition": "h100", "slurm_gpus_per_node": 8, "slurm_mem": "200G"}``.
    """
    return runner_overrides(options, "slurm")


def ray_overrides(options: dict[str, Any]) -> dict[str, Any]:
    """The task's overrides of the ``PYTRAIN_RAY_*`` settings (:func:`runner_overrides`).

    Example: ``{"ray": {"gpus_per_node": 8, "accelerator_type": "H100", "resources": {"spot": 1}}}`` ->
    ``{"ray_gpus_per_node": 8, "ray_accelerator_type": "H100", "ray_resources": {"spot": 1.0}}``.
    """
    return runner_overrides(options, "ray")


def check_options(options: Any) -> None:
    """Check a row's whole ``options`` (what ``pytrain submit`` and the claim run): the training
    settings (:meth:`TrainConfig.from_options`) and the runners' keys (:func:`slurm_overrides`,
    :func:`ray_overrides`).

    Raises:
        ConfigurationError: the first bad key or value, named.
    """
    TrainConfig.from_options(options)
    slurm_overrides(options)
    ray_overrides(options)
    trial = options.get("trial") if isinstance(options, dict) else None
    if trial is not None and (isinstance(trial, bool) or not isinstance(trial, int) or trial < 0):
        raise ConfigurationError(f"task option trial={trial!r} is not a trial number (an integer >= 0)", hint='e.g. {"trial": 3}')
    sweep = options.get("sweep") if isinstance(options, dict) else None
    if sweep is not None and not isinstance(sweep, str):
        raise ConfigurationError(f"task option sweep={sweep!r} is not a sweep name", hint='e.g. {"sweep": "lr-arch"}')
    experiment = options.get("experiment") if isinstance(options, dict) else None
    if experiment is not None and not (isinstance(experiment, str) and 0 < len(experiment.strip()) <= MAX_EXPERIMENT_CHARS):
        raise ConfigurationError(f"task option experiment={experiment!r} is not a non-empty name of at most "
                                 f"{MAX_EXPERIMENT_CHARS} characters", hint='e.g. {"experiment": "kitchen-lr-sweep"}')


def _json(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return f'"{value}"' if isinstance(value, str) else repr(value)
