"""The paper's IRIS study: 1,000 dense runs and 1,000 IHT runs at each s, stored and resumable.

- :mod:`~iht.study.config`: the study's config and presets (and the oracle's settings);
- :mod:`~iht.study.seeds`: every run's seeds from one master seed;
- :mod:`~iht.study.schema`: the stored row of one run, defined once;
- :mod:`~iht.study.chunks`: the work of one chunk of runs (many at once);
- :mod:`~iht.study.faithful`: one run the obvious way, the reference;
- :mod:`~iht.study.store`: the results directory (Parquet parts, config, lock);
- :mod:`~iht.study.runner`: computing what is missing, with progress;
- :mod:`~iht.study.backends`: where chunks are computed (this process, or Ray);
- :mod:`~iht.study.oracle`: the exact optimum over a stored study.
"""
