"""``python -m pytrain.training --task-dir DIR [--sources-root DIR] [--device auto|cpu|cuda] [--num-workers N] [--cache-dir DIR]``

Exit status 0 only when ``model.onnx``, ``tensor_spec.json`` and ``metrics.json`` are complete;
otherwise 1 (130 when interrupted; 75, ``RUN_LOCKED_EXIT_CODE``, when another run holds the task
folder: the orchestrator re-queues the task) with one ``error: ...`` line last on stderr.

Nothing heavy is imported at module level: spawned decoder-probe children import this module.
"""

from __future__ import annotations

import logging
import sys


def _cause_chain(exc: BaseException) -> str:
    parts, seen = [str(exc)], {id(exc)}
    cause = exc.__cause__
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        text = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        if text not in parts[-1]:
            parts.append(text)
        cause = cause.__cause__
    return " <- ".join(parts)


def main(argv: list[str] | None = None) -> int:
    """Run the training entrypoint; returns the exit code (0 only when the model is exported).

    Failures print one ``error: ...`` line on stderr and return 1 (130 when interrupted, 75 when
    another run holds the task folder: :data:`pytrain.training.run_lock.RUN_LOCKED_EXIT_CODE`).
    """
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        from pytrain.errors import PyTrainError
        from pytrain.training.run_lock import RunLockedError
        from pytrain.training.train import get_args_parser, main as train_main
    except ImportError as exc:
        print(f"error: the training dependencies are not installed: {exc} (hint: pip install 'pytrain[train]')", file=sys.stderr)
        return 1
    args = get_args_parser().parse_args(argv)
    try:
        train_main(args)
    except RunLockedError as exc:  # not a failure of this task: the worker re-queues it
        print(f"error: {_cause_chain(exc)}", file=sys.stderr, flush=True)
        return exc.exit_code
    except PyTrainError as exc:
        logging.getLogger("pytrain.training").debug("failure", exc_info=True)
        print(f"error: {_cause_chain(exc)}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr, flush=True)
        return 130
    except Exception as exc:  # a bug or a library failure: keep the traceback in train.log
        from pytrain.training.disk import NO_SPACE_HINT, find_no_space

        if find_no_space(exc) is not None:  # a write the export and checkpoint errors do not word (metrics, plots, logs)
            print(f"error: no space left on device in {args.task_dir}: {_cause_chain(exc)} (hint: {NO_SPACE_HINT})", file=sys.stderr, flush=True)
            return 1
        logging.getLogger("pytrain.training").exception("unexpected failure")
        print(f"error: unexpected {type(exc).__name__}: {_cause_chain(exc)}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
