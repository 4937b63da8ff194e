"""Model extraction: stealing a model through its prediction API (THREATS.md §3).

Attacks: `equation` (Tramèr 2016), `jacobian` (Papernot 2017), `knockoff` (Orekondy 2019, random and adaptive
sampling), `copycat` (Correia-Silva 2018; by default it picks its queries as ActiveThief does, see `selection`),
`tree` (Tramèr 2016 path finding for decision trees), `fee` (Jagielski 2020 functionally-equivalent extraction of
one-hidden-layer ReLU networks).
Each reports fidelity (in and out of distribution), accuracy and transfer success per query budget, and whether
PRADA flags its query stream.
"""

from bastion.attacks.extraction.base import ExtractionAttack, parse_budgets
from bastion.attacks.extraction.copycat import Copycat
from bastion.attacks.extraction.equation import EquationSolving
from bastion.attacks.extraction.fee import FunctionallyEquivalentExtraction
from bastion.attacks.extraction.jacobian import JacobianAugmentation
from bastion.attacks.extraction.knockoff import KnockoffNets
from bastion.attacks.extraction.learning import LearningExtraction
from bastion.attacks.extraction.substitute import default_substitute
from bastion.attacks.extraction.tree import TreePathFinding

__all__ = ["Copycat", "EquationSolving", "ExtractionAttack", "FunctionallyEquivalentExtraction",
           "JacobianAugmentation", "KnockoffNets", "LearningExtraction", "TreePathFinding", "default_substitute",
           "parse_budgets"]
