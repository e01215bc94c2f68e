"""train: producing a module. The training loop for every mode (`loop`), its pool verb
(`finetune`), task heads (`heads`), the Fisher and the second-order penalties of ita and
iel, checkpoints, data-parallel training, and learned weight masks (`masking`, `masks`).

May import: `model`, `bases`, `tasks`, `store`, `errors`, `progress`. Not `edit`,
`analysis`, `interop` or `pool` (a pool arrives as an argument).
"""

from .finetune import finetune, kind_of, module_name
from .heads import head_for
from .loop import MODES, TrainConfig, TrainResult, defaults_for, fit
from .masking import MaskConfig, learn_mask
from .masks import mask

__all__ = [
    "MODES",
    "MaskConfig",
    "TrainConfig",
    "TrainResult",
    "defaults_for",
    "finetune",
    "fit",
    "head_for",
    "kind_of",
    "learn_mask",
    "mask",
    "module_name",
]
