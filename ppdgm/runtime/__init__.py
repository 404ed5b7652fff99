"""Runtime services: devices, torch.distributed, numeric precision, and files written safely (checkpoints, locks).

Above :mod:`ppdgm.programs` (sharded sampling and float32 sites are poutine handlers), below everything else.
"""
