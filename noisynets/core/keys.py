"""The state-dict keys of networks saved before ``R`` moved into the user's module.

Earlier versions kept every decorrelator beside the plain weight, ``layers.<k>.decorrelator.R``
and ``model.<op>.weight``; today ``R`` is a parametrization of the weight, so the same two
tensors are ``model.<op>.parametrizations.weight.0.R`` and ``...parametrizations.weight.
original``. ``current_keys`` renames the first into the second; everything else is kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from noisynets.core.layer import Layer


def current_keys(layers: Sequence[Layer], state: dict[str, Any],
                 prefix: str = "") -> dict[str, Any]:
    """``state`` with an earlier version's keys of every decorrelated layer renamed to
    today's (module doc); a state of today's keys comes back as it is."""
    state = dict(state)
    for k, layer in enumerate(layers):
        old = f"{prefix}layers.{k}.decorrelator.R"
        if old in state and layer.decorrelator is not None:
            base = f"{prefix}model.{layer.name}."
            state[f"{base}parametrizations.weight.0.R"] = state.pop(old)
            if f"{base}weight" in state:
                state[f"{base}parametrizations.weight.original"] = state.pop(f"{base}weight")
    return state
