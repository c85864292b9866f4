"""Shared test settings: hypothesis profiles.

``ci`` (the default) keeps the core suite well under two minutes on two cores;
``thorough`` runs many more examples. Pick one with HYPOTHESIS_PROFILE=thorough.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    deadline=None,
    max_examples=60,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("thorough", deadline=None, max_examples=2000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
