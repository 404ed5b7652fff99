import pytest

import ppdgm
from ppdgm.guides import GaussianMLPEncoder
from ppdgm.models import BernoulliMLPModel

pytest.importorskip("tensorboard")


def _run(tmp_path, logger_dir=None):
    import torch

    from ppdgm.evaluate.tensorboard import TensorBoardLogger

    torch.manual_seed(0)
    model, guide = BernoulliMLPModel(64, 3, (16,)), GaussianMLPEncoder(64, 3, (16,))
    callbacks = []
    if logger_dir is not None:
        callbacks.append(TensorBoardLogger(logger_dir, model=model, image_shape=(8, 8)))
    run = ppdgm.fit(
        model, guide, "digits-binary", "iwae", num_particles=2, epochs=3, progress=False, callbacks=callbacks
    )
    for callback in callbacks:
        callback.close()
    return run


def test_scalars_and_images_are_logged_and_logging_does_not_change_training(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logged = _run(tmp_path, tmp_path / "tb")
    plain = _run(tmp_path)
    strip = [{k: v for k, v in row.items() if k != "seconds"} for row in plain.history]
    assert [{k: v for k, v in row.items() if k != "seconds"} for row in logged.history] == strip

    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0, "scalars": 0}).Reload()
    assert {"train_iwae_bound", "valid_iwae_bound", "seconds"} <= set(events.Tags()["scalars"])
    scalars = events.Scalars("valid_iwae_bound")
    assert [e.step for e in scalars] == [row["step"] for row in logged.history]
    assert [e.value for e in scalars] == pytest.approx([row["valid_iwae_bound"] for row in logged.history], rel=1e-6)
    assert len(events.Images("samples")) == 3


def test_compare_writes_event_files_per_run(tmp_path):
    from ppdgm.compare import compare

    raw = {
        "name": "tb",
        "output": str(tmp_path),
        "seeds": [0],
        "data": {"name": "digits-binary"},
        "model": {"preset": "vae-mlp", "options": {"z_dim": 2, "hidden": [8]}},
        "budget": {"steps": 13},
        "evaluation": {"metrics": ["elbo"]},
        "methods": [{"name": "vae"}],
    }
    compare(raw, progress=False, tensorboard=True)
    assert list((tmp_path / "runs" / "vae-seed0" / "tensorboard").glob("events.out.tfevents.*"))
