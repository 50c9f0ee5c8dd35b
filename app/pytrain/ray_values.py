"""The syntax of every value PyTrain hands to a Ray cluster: one rule per setting.

The ray runner (:mod:`pytrain.runners.ray`) submits one Ray job per run through the Jobs API:
resources (GPUs, CPUs, memory, an accelerator type, custom resources) go into the placement
group of the job's nodes, and the container image or pip list into its runtime environment.
None of them is written into shell text (the job's entrypoint is a fixed command, its spec goes
as data), but a runtime environment makes the cluster *run* things: a pip item that is an option
(``--index-url http://evil``, ``-e git+...``) or a URL installs code from anywhere, and a resource
name is echoed into ``ray status`` and logs. So each value must match a strict pattern, checked
when the settings are read (``PYTRAIN_RAY_*``, the types below), when a task is submitted and
claimed (``options["ray"]``: :func:`pytrain.task_options.ray_overrides`, the same types), and again
when the job is built (:func:`pytrain.runners.ray.job_resources`).

The rules (docs/adr/0017-ray-runner.md, "Values"):

- address: the Jobs API's URL, ``http(s)://host[:port]``, nothing after the port.
- memory: as sbatch's ``--mem`` (:data:`pytrain.value_rules.MEMORY_RULE`), per node.
- accelerator_type: a Ray accelerator type (``H100``, ``A10G``, ``TPU-V4``): letters, digits, ``_``, ``.``, ``-``.
- resources: custom resource names (``node_a``, ``vpc.io/fast``) -> a positive amount.
- container_image: an OCI image reference (``nvcr.io/nvidia/pytorch:24.10-py3``, a ``@sha256:`` digest).
- pip: requirement specifiers only (``torchcodec==0.17.0``, ``av>=12``): no option, URL, path or marker.
- python: the command that runs the job's driver (:data:`pytrain.value_rules.PYTHON_RULE`).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field

from pytrain.value_rules import MEMORY_RULE, PYTHON_RULE, ValueRule

#: The rule of each ``PYTRAIN_RAY_<KEY>`` setting / ``options["ray"][key]`` that is text.
RULES: dict[str, ValueRule] = {
    "address": ValueRule(r"https?://[A-Za-z0-9.-]{1,253}(:[0-9]{1,5})?/?", "the Ray Jobs API's URL: http(s)://host[:port]",
                         "http://ray-head:8265"),
    "memory": MEMORY_RULE,
    "accelerator_type": ValueRule(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", "a Ray accelerator type (letters, digits, '_', '.', '-')", "H100"),
    "resource": ValueRule(r"[A-Za-z_][A-Za-z0-9_.:/-]{0,127}", "a custom resource name (letters, digits, '_', '.', ':', '/', '-')",
                          "node_a"),
    "container_image": ValueRule(r"[A-Za-z0-9][A-Za-z0-9_.:/@-]{0,511}", "an OCI image reference",
                                 "nvcr.io/nvidia/pytorch:24.10-py3"),
    "pip": ValueRule(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}(\[[A-Za-z0-9_.,-]{1,128}\])?((==|>=|<=|~=|!=|<|>)[A-Za-z0-9_.*+!]{1,64}"
                     r"(,(==|>=|<=|~=|!=|<|>)[A-Za-z0-9_.*+!]{1,64}){0,7})?",
                     "a pip requirement specifier: a package name, optional extras and version bounds (no option, URL or path)",
                     "torchcodec==0.17.0"),
    "python": PYTHON_RULE,
}
#: The largest amount of one custom resource a node may ask for (Ray's own limit is far higher;
#: anything above this is a typo).
MAX_RESOURCE_AMOUNT = 1_000_000

# The types of the ray_* settings in pytrain.settings.Settings (pydantic raises ValidationError
# naming the setting; ray_overrides validates a task's values against the same types).
RayAddress = Annotated[str, AfterValidator(RULES["address"].check)]
RayMemory = Annotated[str, AfterValidator(RULES["memory"].check)]
RayAcceleratorType = Annotated[str, AfterValidator(RULES["accelerator_type"].check)]
RayResourceName = Annotated[str, AfterValidator(RULES["resource"].check)]
RayResources = dict[RayResourceName, Annotated[float, Field(gt=0, le=MAX_RESOURCE_AMOUNT)]]
RayContainerImage = Annotated[str, AfterValidator(RULES["container_image"].check)]
RayPipRequirement = Annotated[str, AfterValidator(RULES["pip"].check)]
RayPip = Annotated[list[RayPipRequirement], Field(max_length=64)]
RayPython = Annotated[str, AfterValidator(RULES["python"].check)]
