"""interop: the world outside the pool. Files brought in (`importing`: modpool files, and
the field's fine-tuned checkpoints read by `checkpoints`, `unpickle` and `hf_clip`), plain
weights written out (`export`: open_clip or Hugging Face), and the Hub both ways (`hub`).

May import: `model`, `bases`, `tasks`, `store`, `errors`, `progress`. Not `train`, `edit`,
`analysis` or `pool` (a pool arrives as an argument).
"""

from .export import export_weights
from .hub import pull, push
from .importing import import_checkpoint, import_file, import_many

__all__ = [
    "export_weights",
    "import_checkpoint",
    "import_file",
    "import_many",
    "pull",
    "push",
]
