"""Layout: the pure planner (:mod:`.plan`), the batched packer (:mod:`.pack`) and generations."""

from . import gc, generation, pack, plan
from .plan import POLICIES, Budgets, Placement

__all__ = ["POLICIES", "Budgets", "Placement", "gc", "generation", "pack", "plan"]
