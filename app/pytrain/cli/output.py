"""Rich output of the CLI on stdout (the ``pytrain models`` and ``pytrain tasks`` tables).

Every command that prints a rich renderable to stdout takes its console from
:func:`stdout_console`, so piped output is never cut.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

#: The width of a console whose stdout is not a terminal: wider than any row, so no cell is cut.
#: A table is as wide as its content, never padded to this.
UNBOUNDED_WIDTH = 1_000_000


def stdout_console() -> "Console":
    """A rich console on stdout.

    On a terminal: the terminal's width (long cells are shortened to fit, ``kitchen_ve…``). Not
    on a terminal (a pipe, a file, a test's capture): as wide as the content, so a table prints
    every value in full for ``grep`` and scripts (rich would fit it to 80 columns); no colour.
    """
    from rich.console import Console

    if sys.stdout.isatty():
        return Console()
    return Console(width=UNBOUNDED_WIDTH)
