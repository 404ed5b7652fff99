"""The ``ppdgm`` command line: train, evaluate, sample, compare, presets, demo."""
