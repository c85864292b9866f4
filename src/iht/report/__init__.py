"""Every figure and HTML page, drawn from what is on disk only (nothing is trained again).

- :mod:`~iht.report.study`: the IRIS study's report (tables in :mod:`~iht.report.study_tables`,
  claims in :mod:`~iht.report.claims`, figures in :mod:`~iht.report.study_figures`, the
  oracle's figure in :mod:`~iht.report.oracle`);
- :mod:`~iht.report.train`: an ``iht train`` run's report;
- :mod:`~iht.report.compare`: an ``iht compare`` run's page;
- :mod:`~iht.report.redraw`: which of these a directory holds, and redrawing it;
- :mod:`~iht.report.html`, :mod:`~iht.report.plots`: the pieces they share.
"""
