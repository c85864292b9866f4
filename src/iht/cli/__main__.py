"""``python -m iht.cli``: the ``iht`` command."""

from .main import run

run()
