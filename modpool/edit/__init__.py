"""edit: combining modules. Composition recipes and their streamed files (`compose`,
`composition`), the merge methods (`merge`, one file each, registered by name), alpha
search and negation search (`search`), and exact forgetting (`forget`).

May import: `model`, `bases`, `tasks`, `store`, `errors`, `progress`. Not `train`,
`analysis`, `interop` or `pool` (a pool arrives as an argument).
"""

from .compose import build, compose, make_recipe, merged
from .forget import ForgetReport, dependents_in_order, fisher_dependents, forget

__all__ = [
    "ForgetReport",
    "build",
    "compose",
    "dependents_in_order",
    "fisher_dependents",
    "forget",
    "make_recipe",
    "merged",
]
