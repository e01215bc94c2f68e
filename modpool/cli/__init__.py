"""cli: the `modpool` command, one module per group of commands. Each command parses its
options, calls the Python API (`modpool.Pool` and the rooms' functions) and prints; no
logic lives here.

May import: every room. The only room that imports typer, and rich beyond progress bars.
"""

# isort: off
from .app import app, main

# each module registers its commands on `app`, in the order `modpool --help` lists them
from . import manage, training, editing, measuring, sharing  # noqa: F401, E402
# isort: on

__all__ = ["app", "main"]
