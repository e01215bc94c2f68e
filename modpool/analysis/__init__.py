"""analysis: measuring modules and compositions. Accuracy and normalised accuracy with the
pool's eval cache (`evaluate`), and the weight disentanglement error (`disentangle`).

May import: `model`, `bases`, `tasks`, `store`, `errors`, `progress`. Not `train`, `edit`,
`interop` or `pool` (a pool arrives as an argument).
"""

from .disentangle import disentanglement
from .evaluate import EvalRow, evaluate

__all__ = ["EvalRow", "disentanglement", "evaluate"]
