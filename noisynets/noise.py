"""The noise sources live in ``noisynets.core.noise``; this name keeps earlier imports working."""

from noisynets.core.noise import *  # noqa: F403
