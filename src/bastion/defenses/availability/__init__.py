"""Availability mitigations with proof: each re-measures the availability attacks with the mitigation in place
(adaptively where the attacker can see it) and the cost to natural inputs; the availability family judges them."""
