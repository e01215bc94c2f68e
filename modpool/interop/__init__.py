"""interop: the world outside the pool. Files brought in (`importing`), plain weights
written out (`export`), and the Hugging Face Hub both ways (`hub`).

May import: `model`, `bases`, `tasks`, `store`, `errors`, `progress`. Not `train`, `edit`,
`analysis` or `pool` (a pool arrives as an argument).
"""

from .importing import import_file, import_many

__all__ = ["import_file", "import_many"]
