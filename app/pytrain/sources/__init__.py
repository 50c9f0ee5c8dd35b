"""Datasets: registration (``sources`` table), class resolution and the split manifest.

- :func:`sync_sources` -- register the dataset folders of the sources root (``pytrain sources sync``)
- :mod:`pytrain.sources.catalog` -- the video catalog (table ``videos``): incremental probe, ``scan.json`` seed
- :func:`resolve_classes` -- a task's datasets and classes -> labelled clips
- :func:`split_clips`, :func:`write_manifest` -- the deterministic stratified split (grouped by recording
  with :func:`load_groups`), ``manifest.csv``
- :mod:`pytrain.sources.synthetic` -- small synthetic mp4 datasets for the demo and the tests
"""

from pytrain.sources.registry import SyncResult, discover_datasets, sync_sources
from pytrain.sources.resolve import Clip, ResolvedClasses, class_of, resolve_classes
from pytrain.sources.split import ManifestRow, load_groups, min_clips, read_manifest, split_clips, split_sizes, write_manifest

__all__ = [
    "Clip",
    "ManifestRow",
    "ResolvedClasses",
    "SyncResult",
    "class_of",
    "discover_datasets",
    "load_groups",
    "min_clips",
    "read_manifest",
    "resolve_classes",
    "split_clips",
    "split_sizes",
    "sync_sources",
    "write_manifest",
]
