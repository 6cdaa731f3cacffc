"""Search spaces: what an agent may build (``base``: the protocols and exploration), BlockQNN's NSC blocks
(``nsc``) and the NAS-Bench-201 cells of a benchmark table (``nasbench201``)."""

from blockqnn.spaces.base import Action, SearchSpace, State, TabularSpace, checked_trajectory, explore
from blockqnn.spaces.nasbench201 import NASBench201Space
from blockqnn.spaces.nsc import NSCSpace

__all__ = ["Action", "NASBench201Space", "NSCSpace", "SearchSpace", "State", "TabularSpace", "checked_trajectory",
           "explore"]
