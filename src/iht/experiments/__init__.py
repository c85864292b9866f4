"""The commands' work as library functions: ``train`` and ``compare``.

Each takes a typed config, returns a typed result and saves it as data (Parquet, and the
config and what it resolved to as JSON); none of them draws: the pages and figures are
:mod:`iht.report`, read from what these functions stored.
"""
