"""Disk-full errors a user can act on: which folder, what was being written, how many bytes.

A full disk surfaces as an ``OSError`` with ``errno.ENOSPC`` (or ``EDQUOT`` over a quota),
sometimes wrapped by a library (the ONNX exporters re-raise it as their own exception types). The
helpers here find it in an exception's cause chain and word the error, so every writer of the task
folder (checkpoints, the ONNX export) reports it the same way instead of an "unexpected OSError".
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path
from typing import Any

#: ``errno`` values that mean "no room left": the device is full, or the user's quota is.
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
#: The fix, for the error's hint.
NO_SPACE_HINT = "free space on that file system (or point PYTRAIN_MODEL_TASKS_DIR at a bigger one), then retry the task"


def find_no_space(exc: BaseException | None) -> OSError | None:
    """The first ``OSError`` with an errno in :data:`NO_SPACE_ERRNOS` in ``exc``'s ``__cause__`` /
    ``__context__`` chain (``exc`` itself included), or ``None``.

    Some exporters raise a new exception whose text alone carries the ``[Errno 28]``; such an
    exception is returned as a synthetic ``OSError(ENOSPC, its text)``.
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in NO_SPACE_ERRNOS:
            return exc
        if "[Errno 28]" in str(exc) or "No space left on device" in str(exc):
            return OSError(errno.ENOSPC, str(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def tensor_bytes(obj: Any) -> int:
    """The bytes of the tensors in ``obj`` (a tensor, or dicts, lists and tuples holding them, e.g.
    a checkpoint or a ``state_dict``): the estimate :func:`no_space_message` gives for a file of
    weights (the rest of such a file is kilobytes)."""
    import torch

    total, todo = 0, [obj]
    while todo:
        item = todo.pop()
        if isinstance(item, torch.Tensor):
            total += item.numel() * item.element_size()
        elif isinstance(item, dict):
            todo.extend(item.values())
        elif isinstance(item, (list, tuple)):
            todo.extend(item)
    return total


def no_space_message(folder: Path, writing: str, needed_bytes: int | None) -> str:
    """``"no space left on device in <folder> while writing <writing> (about N bytes needed, M bytes free)"``.

    Args:
        folder: the folder being written to.
        writing: what was being written (``model.onnx``, ``checkpoint_last.pt``).
        needed_bytes: an estimate of the bytes the file needs, or ``None`` when unknown.
    """
    try:
        free: int | None = shutil.disk_usage(folder).free
    except OSError:
        free = None
    figures = []
    if needed_bytes is not None:
        figures.append(f"about {needed_bytes} bytes needed")
    if free is not None:
        figures.append(f"{free} bytes free")
    tail = f" ({', '.join(figures)})" if figures else ""
    return f"no space left on device in {folder} while writing {writing}{tail}"
