"""noisynets: learning in networks whose nodes carry intrinsic noise, by node perturbation."""

from noisynets.core.export import export_model
from noisynets.core.network import Network, wrap
from noisynets.core.record import Passes, Record
from noisynets.rules import RULES, make_rule, uses_decorrelation

__version__ = "0.1.0"

__all__ = [
    "RULES", "Network", "Passes", "Record", "export_model", "make_rule", "uses_decorrelation",
    "wrap", "__version__",
]
