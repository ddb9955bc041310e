"""Learning rules by name: the node-perturbation family ``bp``, ``np``, ``inp``, ``anp`` and
their decorrelated variants, and the comparisons ``wp``, ``es``, ``wfg``, ``afg``, ``fa``,
``dfa``, ``opzo``.

The decorrelated variants ``dbp``, ``dnp``, ``dinp``, ``danp`` (``DECORRELATED``) name the
same rule on a network whose every layer decorrelates its input; the rule itself is
unchanged, the network carries ``R``. ``dfa`` is direct feedback alignment, not a
decorrelated ``fa``: decorrelation is a property of a name listed in ``DECORRELATED``,
never of its first letter.

Example::

    >>> from noisynets.rules import make_rule, uses_decorrelation
    >>> make_rule("danp", noise_samples=2), uses_decorrelation("danp")
    (ANP(noise_samples=2), True)
    >>> make_rule("dfa"), uses_decorrelation("dfa")
    (DFA(seed=0), False)
"""

from __future__ import annotations

from noisynets.rules.base import Gradients, Rule
from noisynets.rules.bp import BP
from noisynets.rules.feedback_alignment import DFA, FA
from noisynets.rules.forward_gradient import AFG, WFG
from noisynets.rules.opzo import OPZO
from noisynets.rules.perturbation import ANP, INP, NP
from noisynets.rules.weight_perturbation import ES, WP

BASE_RULES: dict[str, type[Rule]] = {
    "bp": BP, "np": NP, "inp": INP, "anp": ANP,
    "wp": WP, "es": ES, "wfg": WFG, "afg": AFG, "fa": FA, "dfa": DFA, "opzo": OPZO,
}
# The decorrelated variants and the rule each one runs.
DECORRELATED: dict[str, str] = {"dbp": "bp", "dnp": "np", "dinp": "inp", "danp": "anp"}
# The node-perturbation family (the paper's eight), then the comparisons (issue 30).
PAPER_RULES: tuple[str, ...] = ("bp", "dbp", "np", "dnp", "inp", "dinp", "anp", "danp")
COMPARISONS: tuple[str, ...] = ("wp", "es", "wfg", "afg", "fa", "dfa", "opzo")
RULES: tuple[str, ...] = PAPER_RULES + COMPARISONS
# Rules that use no noise passes (no --noise-samples, no --antithetic).
NOISELESS: tuple[str, ...] = ("bp", "dbp", "fa", "dfa")
# Rules that keep random feedback matrices drawn from a seed.
SEEDED: tuple[type[Rule], ...] = (FA, DFA)


def uses_decorrelation(name: str) -> bool:
    """Whether rule ``name`` trains a decorrelated network (``DECORRELATED``)."""
    _check(name)
    return name in DECORRELATED


def make_rule(name: str, noise_samples: int = 1, antithetic: bool = False,
              seed: int = 0) -> Rule:
    """The rule called ``name`` (one of ``RULES``) with K = ``noise_samples`` noisy passes
    (tangents for wfg/afg, antithetic pairs for es), or K antithetic pairs of them
    (``antithetic``: np, inp, anp, their d-variants, wp, opzo); ``seed`` draws the fixed
    feedback matrices of fa and dfa."""
    _check(name)
    if int(noise_samples) < 1:
        raise ValueError(f"noise_samples {noise_samples} must be >= 1")
    base = BASE_RULES[DECORRELATED.get(name, name)]
    if antithetic and name in NOISELESS + ("wfg", "afg"):
        raise ValueError(f"{name} uses no noise passes: antithetic pairs are for the "
                         "perturbation rules (np, inp, anp, their d-variants, wp, es, opzo)")
    if base in SEEDED:
        return base(seed=seed)
    if base is BP:
        return base()
    return base(noise_samples=noise_samples, antithetic=antithetic)


def _check(name: str) -> None:
    if name not in RULES:
        raise ValueError(f"unknown rule {name!r}: choose one of {', '.join(RULES)}")


__all__ = [
    "AFG", "ANP", "BP", "COMPARISONS", "DECORRELATED", "DFA", "ES", "FA", "INP", "NP", "OPZO",
    "PAPER_RULES", "RULES", "WFG", "WP", "Gradients", "Rule", "make_rule", "uses_decorrelation",
]
