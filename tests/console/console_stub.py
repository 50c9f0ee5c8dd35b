"""What the console's tests submit and the orchestrator process they run (``conftest.py``)."""

from pathlib import Path

#: The datasets the tests submit from: placeholder files (class resolution and the split look at
#: names only; the stub training never decodes them).
LAYOUT = {"dataset1": {"cooking_bread": 5, "drinking_water": 5, "eating": 5}}
#: The classes and clip size the tests submit, and the stub's model is exported for.
CLASSES, CLIP = ["cooking", "drinking"], {"num_frames": 8, "height": 32, "width": 32}
STUB = str(Path(__file__).with_name("console_training.py"))
#: The orchestrator's GPU selection (``PYTRAIN_GPUS``), which the Workers page shows.
ORCHESTRATOR_GPUS = "0,1"

WORKER = """
import sys
from pytrain.orchestrator import Orchestrator
from pytrain.runners import LocalRunner
from pytrain.settings import Settings

settings = Settings()
worker = Orchestrator(settings, runner=LocalRunner(settings, command=[sys.executable, sys.argv[1]], grace_seconds=1.0))
worker.install_signal_handlers()
worker.run()
"""


def make_sweep(engine, settings, name: str, *, epochs: int = 2, **extra):
    """A sweep of ``learning_rate`` over :data:`CLASSES` made by the sweep code (default 6 trials,
    one at a time; its trials rank first in the queue, nothing published); the store and the sweep row."""
    from pytrain.sweeps.params import parse_param
    from pytrain.sweeps.store import SweepStore

    store = SweepStore(engine, settings)
    base = {"model_name": f"{name}-model", "sources": ["dataset1"], "classes": CLASSES, "epochs": epochs, "priority": 50}
    return store, store.create({"name": name, "base": base, "params": [parse_param("learning_rate=loguniform:1e-4:3e-3")],
                                "sampler": "random", "pruner": "none", "metric": "val_accuracy", "publish": "none", "seed": 7,
                                **{"trials": 6, "parallel": 1, **extra}})
