"""Programs: a Pyro model/guide pair, what one trace of a batch says about it, and the two sides it runs on.

The lowest layer above :mod:`ppdgm.errors`: :mod:`~ppdgm.programs.batch` (a batch's columns),
:mod:`~ppdgm.programs.handlers` (poutine handlers), :mod:`~ppdgm.programs.sites` (calling a program as
``SVI.step`` would; its sites), :mod:`~ppdgm.programs.inspection` (one trace of the first batch),
:mod:`~ppdgm.programs.pair` (:class:`ProgramPair`), :mod:`~ppdgm.programs.sides` (data side, auxiliary pairs),
:mod:`~ppdgm.programs.rows` (site scores, dreamt rows), :mod:`~ppdgm.programs.combine` (log-weight arithmetic).
"""
