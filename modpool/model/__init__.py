"""model: a base used with a delta. The two forwards (`nonlinear` at theta_0 + tau,
`tangent` the first-order Taylor model through one JVP), delta arithmetic, the edited
model as an `nn.Module`, and accuracy over a data set.

May import: `bases`, `tasks`, `errors`, `progress`.
"""

from .delta import Params, edited, weighted_parts, weighted_sum
from .edited import EditedModel

__all__ = ["EditedModel", "Params", "edited", "weighted_parts", "weighted_sum"]
