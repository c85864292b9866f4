"""The ``iht`` command line: click only, one module per command, over the typed configs.

:func:`main` runs a command and turns every user error into one line ``iht: error: ...`` with
exit code 2: click's usage errors and the project's own :class:`~iht.errors.IhtError`; any
other exception is a bug and keeps its traceback.
"""

from .main import cli, main, run

__all__ = ["cli", "main", "run"]
