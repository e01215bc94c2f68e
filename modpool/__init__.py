"""modpool: edit pretrained vision models with composable task modules."""

from .errors import ModpoolError
from .pool import Pool
from .version import __version__

__all__ = ["ModpoolError", "Pool", "__version__"]
