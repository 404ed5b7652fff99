"""The compiled step: a method's step recorded once per input shape and replayed as straight-line tensor code.

:mod:`~ppdgm.compile.step` (:class:`CompiledStep`, the safety checks) is the front; the rest are its parts:
:mod:`~ppdgm.compile.tracer` (recording a step's operations), :mod:`~ppdgm.compile.recording` (replay, CUDA
graphs), :mod:`~ppdgm.compile.passes` (graph passes), :mod:`~ppdgm.compile.state` (snapshots and comparisons),
:mod:`~ppdgm.compile.updates` (optimizer steps inside a recording), :mod:`~ppdgm.compile.host_reads` (refusing host
reads), :mod:`~ppdgm.compile.function` (gradient-free functions), :mod:`~ppdgm.compile.failures` (why a step runs
eagerly).
"""
