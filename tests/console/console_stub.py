"""What the console's tests submit and the orchestrator process they run (``conftest.py``)."""

from pathlib import Path

#: The datasets the tests submit from: placeholder files (class resolution and the split look at
#: names only; the stub training never decodes them).
LAYOUT = {"dataset1": {"cooking_bread": 5, "drinking_water": 5, "eating": 5}}
#: The classes and clip size the tests submit, and the stub's model is exported for.
CLASSES, CLIP = ["cooking", "drinking"], {"num_frames": 8, "height": 32, "width": 32}
STUB = str(Path(__file__).with_name("console_training.py"))

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
