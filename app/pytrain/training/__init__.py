"""The training entrypoint: ``python -m pytrain.training --task-dir DIR [--sources-root DIR]``.

Reads ``task.json`` and ``manifest.csv`` from the task folder and leaves there the checkpoints,
``model.onnx``, ``tensor_spec.json``, ``metrics.json``, ``skipped.json``, ``progress.jsonl`` and the
plots (see :mod:`pytrain.spec`). Modules:

- :mod:`~pytrain.training.data`       -- manifest, Dataset, shuffle buffer
- :mod:`~pytrain.training.clip_cache` -- the shared decoded-clip cache (content-addressed, capped, LRU)
- :mod:`~pytrain.training.probe`      -- pre-scan of bad files in child processes
- :mod:`~pytrain.training.transforms` -- training augmentation: crop/flip boxes drawn per clip in the loader, applied to the batch on the device
- :mod:`~pytrain.training.preprocess` -- normalisation + layout, shared with the ONNX graph
- :mod:`~pytrain.training.models`     -- the architecture registry
- :mod:`~pytrain.training.train`      -- ``train_one_epoch``, ``evaluate``, ``main``
- :mod:`~pytrain.training.export`     -- ONNX export and parity check
- :mod:`~pytrain.training.metrics`, :mod:`~pytrain.training.plots`

This package's ``__init__`` imports nothing heavy: the decoder probe children import it.
"""
