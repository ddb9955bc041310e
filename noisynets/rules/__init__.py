"""Learning rules by name: ``bp``, ``np``, ``inp``, ``anp`` and their decorrelated variants.

A ``d`` prefix (``dbp``, ``dnp``, ``dinp``, ``danp``) names the same rule on a network whose
every layer decorrelates its input; the rule itself is unchanged, the network carries ``R``.

Example::

    >>> from noisynets.rules import make_rule, uses_decorrelation
    >>> make_rule("danp", noise_samples=2), uses_decorrelation("danp")
    (ANP(noise_samples=2), True)
"""

from __future__ import annotations

from noisynets.rules.base import Gradients, Rule
from noisynets.rules.bp import BP
from noisynets.rules.perturbation import ANP, INP, NP

BASE_RULES: dict[str, type[Rule]] = {"bp": BP, "np": NP, "inp": INP, "anp": ANP}
RULES: tuple[str, ...] = ("bp", "dbp", "np", "dnp", "inp", "dinp", "anp", "danp")


def uses_decorrelation(name: str) -> bool:
    """Whether rule ``name`` trains a decorrelated network."""
    _check(name)
    return name.startswith("d")


def make_rule(name: str, noise_samples: int = 1, antithetic: bool = False) -> Rule:
    """The rule called ``name`` (one of ``RULES``) with K = ``noise_samples`` noisy passes, or
    K antithetic pairs of them (``antithetic``, the perturbation rules only)."""
    _check(name)
    if int(noise_samples) < 1:
        raise ValueError(f"noise_samples {noise_samples} must be >= 1")
    base = BASE_RULES[name[1:] if name.startswith("d") else name]
    if base is BP:
        if antithetic:
            raise ValueError(f"{name} uses no noise: antithetic pairs are for the perturbation "
                             "rules (np, inp, anp and their d-variants)")
        return base()
    return base(noise_samples=noise_samples, antithetic=antithetic)


def _check(name: str) -> None:
    if name not in RULES:
        raise ValueError(f"unknown rule {name!r}: choose one of {', '.join(RULES)}")


__all__ = [
    "ANP", "BP", "INP", "NP", "RULES", "Gradients", "Rule", "make_rule", "uses_decorrelation",
]
