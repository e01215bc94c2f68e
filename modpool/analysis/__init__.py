"""analysis: measuring modules and compositions. Accuracy and normalised accuracy with the
pool's eval cache (`evaluate`), the weight disentanglement error (`disentangle`), and what
learned weight masks share (`masks`), which ingredient produced a prediction (`explain`),
how far a module is from the tangent regime (`linearity`); figures through `figures`
(matplotlib, optional).

May import: `model`, `bases`, `tasks`, `store`, `errors`, `progress`. Not `train`, `edit`,
`interop` or `pool` (a pool arrives as an argument).
"""

from .disentangle import disentanglement
from .evaluate import EvalRow, evaluate
from .explain import explain
from .linearity import linearity
from .masks import analyse_masks

__all__ = ["EvalRow", "analyse_masks", "disentanglement", "evaluate", "explain", "linearity"]
