"""modpool: edit pretrained vision models with composable task modules."""

__version__ = "0.2.0"

from .errors import ModpoolError  # noqa: E402
from .pool import Pool  # noqa: E402

__all__ = ["ModpoolError", "Pool", "__version__"]
