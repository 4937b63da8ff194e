"""Evasion attacks (THREATS.md §1): adversarial examples within an Lp ball.

White box: `fgsm`, `pgd` (L∞/L2/L1), `apgd-ce`, `apgd-dlr`, `apgd-t`, `fab`, `fab-t`, `cw`, `deepfool`; scores
only: `square`; labels only: `hopskipjump`, `transfer` (from a surrogate); wrappers: `eot`, `bpda`; and `auto`, the
self-checking ensemble. Every attack takes several epsilons in one call and reports the robust accuracy at each.
"""

from bastion.attacks.evasion.apgd import APGD, APGDCE, APGDDLR, APGDT
from bastion.attacks.evasion.auto import AutoAttack
from bastion.attacks.evasion.base import EvasionAttack, MinNormAttack, parse_eps
from bastion.attacks.evasion.cw import CarliniWagnerL2
from bastion.attacks.evasion.deepfool import DeepFool
from bastion.attacks.evasion.fab import FAB, FABT
from bastion.attacks.evasion.gradient import FGSM, PGD
from bastion.attacks.evasion.hopskipjump import HopSkipJump
from bastion.attacks.evasion.square import Square
from bastion.attacks.evasion.transfer import Transfer
from bastion.attacks.evasion.wrappers import BPDA, EOT, BPDATarget, EOTTarget, masking_modules

__all__ = ["APGD", "APGDCE", "APGDDLR", "APGDT", "AutoAttack", "BPDA", "BPDATarget", "CarliniWagnerL2", "DeepFool",
           "EOT", "EOTTarget", "EvasionAttack", "FAB", "FABT", "FGSM", "HopSkipJump", "MinNormAttack", "PGD",
           "Square", "Transfer", "masking_modules", "parse_eps"]
