"""TensorBoard logging as a :func:`ppdgm.fit` callback (needs the optional extra: ``pip install ppdgm[tensorboard]``).

``ppdgm.fit(..., callbacks=[TensorBoardLogger("runs/tb", model=model, image_shape=(28, 28))])`` writes,
after every epoch, each ``train_*``/``valid_*`` metric and the epoch's seconds as scalars at the
run's global step, and, when ``image_shape`` is given, a grid of the model's samples as an image.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ppdgm.evaluate.sampling import generate, image_grid


class TensorBoardLogger:
    """Epoch callback writing TensorBoard event files to ``log_dir``.

    Args:
        log_dir: folder of the event files.
        model: the model to draw samples from (for the image); ``None`` logs scalars only.
        image_shape: the shape of one datapoint as an image, e.g. ``(28, 28)``.
        image_every: log the sample image every N epochs.
        num_images: samples in the grid.
    """

    def __init__(
        self,
        log_dir: str | Path,
        model: Callable | None = None,
        image_shape: tuple[int, ...] | None = None,
        image_every: int = 1,
        num_images: int = 64,
    ) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError(
                "TensorBoard logging needs the tensorboard package: pip install ppdgm[tensorboard]"
            ) from err
        self.writer = SummaryWriter(log_dir=str(log_dir))
        self.model, self.image_shape = model, image_shape
        self.image_every, self.num_images = image_every, num_images

    def __call__(self, run: Any, record: dict) -> None:
        step = record["step"]
        for key, value in record.items():
            if key.startswith(("train_", "valid_")) or key == "seconds":
                self.writer.add_scalar(key, value, step)
        if self.model is not None and self.image_shape is not None and record["epoch"] % self.image_every == 0:
            with run.params(), torch.random.fork_rng():  # drawing images must not change the training's RNG
                grid = image_grid(generate(self.model, self.num_images), self.image_shape)
            self.writer.add_image("samples", torch.as_tensor(grid).unsqueeze(0), step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
