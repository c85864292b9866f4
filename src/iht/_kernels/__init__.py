"""Compiled (numba) kernels, private to the package and loaded on first use.

- :mod:`~iht._kernels.iht_step`: the IHT step and H_s for large CPU pools, in two passes;
- :mod:`~iht._kernels.iris`: the IRIS study's engine, every run trained in one parallel task.

Nothing here is imported by ``import iht``: the maths modules import a kernel inside the
function that first needs it, so numba loads (and compiles, or reads its cache) only then.
"""
