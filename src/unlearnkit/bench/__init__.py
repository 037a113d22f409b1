"""Benchmark suites: the oracle and every method on one protocol, over seeds.

Modules, lowest first: ``progress`` (bars or log lines), ``loop`` (the row loop: store, curves),
``results`` (method selection, the results.json schema, summaries, Markdown), ``rows`` (the injectable
:class:`~unlearnkit.bench.rows.RowRunner` and the receipt), ``kinds`` (the registry of suite kinds),
``plots`` and ``tables`` (figure and terminal tables), the kinds ``plain``, ``worstcase``, ``sequential``
and ``composite``, and ``suite`` (``run_suite``: load a preset, dispatch on its kind)."""
