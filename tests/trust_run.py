"""One small trained run shared by the trust tests (calibration, unknown, heat maps): a vggnet of width 8
(global average pooling + linear head, so plain CAM applies) on a 3-class folder, with its ONNX export."""
from __future__ import annotations

import functools
import tempfile
from pathlib import Path

CLOSE_COLOURS = {"red": (125, 95, 95), "green": (95, 125, 95), "blue": (95, 95, 125)}
FAST = dict(batch_size=16, progress=False, amp="off", workers=0, tensorboard=False, plots=False)


@functools.lru_cache(maxsize=None)
def trust_run():
    """(run, ONNX path with the cam output, data folder): trained once per test process."""
    import classifier
    from tests.conftest import write_class_images

    tmp = Path(tempfile.mkdtemp(prefix="trust-run-"))
    # colours 30 apart under +-40 noise: classes overlap, so validation has errors and the temperature an optimum
    data = write_class_images(tmp / "colours", per_class=24, classes=CLOSE_COLOURS)
    run = classifier.train(model="vggnet", extra={"width": 8}, dataset=f"folder:{data}", epochs=2,
                           val_fraction=0.25, project=str(tmp / "runs"), name="trust", **FAST)
    onnx_path = run.model.export(cam=True)
    return run, onnx_path, data
