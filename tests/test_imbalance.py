"""Imbalanced folders: the balanced sampler (--sampler balanced) and loss weights (--class-weights auto)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from classifier.config import make_config
from classifier.data import build_loader, load_dataset
from classifier.data.loaders import inverse_class_frequency
from classifier.errors import ClassifierError
from tests.conftest import COLOURS, write_class_images


@pytest.fixture(scope="module")
def ten_to_one(tmp_path_factory):
    """A folder of 30 red and 3 blue 8x8 images."""
    root = tmp_path_factory.mktemp("imbalanced") / "f"
    write_class_images(root, per_class=30, size=8, classes={"red": COLOURS["red"]})
    write_class_images(root, per_class=3, size=8, classes={"blue": COLOURS["blue"]}, seed=1)
    return root


def _labels(loader, epochs):
    out = []
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        out += [y for _, batch in loader for y in batch.tolist()]
    return np.array(out)


@pytest.mark.parametrize("cache", [None, False], ids=["in-memory", "streaming"])
def test_balanced_sampler_draws_classes_equally(ten_to_one, cache):
    info, splits = load_dataset(f"folder:{ten_to_one}")
    samples = splits["train"]
    assert np.bincount(samples.labels).tolist() == [3, 30]  # blue, red
    common = dict(train=True, batch_size=11, workers=0, cache=cache, seed=5)
    shuffled = _labels(build_loader(samples, info.preprocessing(), **common), 12)
    balanced = _labels(build_loader(samples, info.preprocessing(), sampler="balanced", **common), 12)
    assert len(balanced) == len(shuffled) == 12 * 33  # same epoch length
    assert (shuffled == 0).mean() == pytest.approx(3 / 33)
    assert 0.4 < (balanced == 0).mean() < 0.6  # 396 draws: the standard deviation is 0.025


def test_balanced_sampler_is_seeded_per_epoch_and_sharded_per_rank(ten_to_one):
    info, splits = load_dataset(f"folder:{ten_to_one}")

    def loader(rank=0, world_size=1, seed=0):
        return build_loader(splits["train"], info.preprocessing(), train=True, batch_size=4, sampler="balanced",
                            seed=seed, rank=rank, world_size=world_size)

    a, b = loader(), loader()
    for epoch in (0, 3):
        a.set_epoch(epoch), b.set_epoch(epoch)
        assert np.array_equal(a.indices(), b.indices())
    first = a.indices().copy()
    a.set_epoch(4)
    assert not np.array_equal(a.indices(), first)
    assert not np.array_equal(loader(seed=1).indices(), loader().indices())
    ranks = [loader(rank=r, world_size=2) for r in range(2)]
    whole = loader().indices()
    interleaved = np.empty(2 * len(ranks[0].indices()), np.int64)
    interleaved[0::2], interleaved[1::2] = ranks[0].indices(), ranks[1].indices()
    assert np.array_equal(interleaved[:len(whole)], whole)  # the ranks split one balanced draw between them


def test_inverse_class_frequency():
    labels = np.array([0] * 30 + [2] * 3)
    weights = inverse_class_frequency(labels, 3)
    np.testing.assert_allclose(weights, [33 / 60, 0.0, 33 / 6])
    np.testing.assert_allclose(weights[labels].mean(), 1.0)  # a sample weighs 1 on average


def test_class_weights_weight_the_training_loss(ten_to_one, tmp_path, monkeypatch):
    from classifier.engine import trainer

    calls = []
    real = trainer.train_one_epoch

    def spy(model, loader, ctx, **kw):
        sums, step = real(model, loader, ctx, **kw)
        calls.append((ctx.class_weights, loader.samples.labels, sums.mean_loss))
        return sums, step

    monkeypatch.setattr(trainer, "train_one_epoch", spy)
    base = dict(model="lenet5", dataset=f"folder:{ten_to_one}", epochs=1, batch_size=8, progress=False, amp="off",
                workers=0, tensorboard=False, eval_test=False, plots=False, project=str(tmp_path), augment="none")
    for weights in ("none", "auto"):
        trainer.fit(make_config({**base, "class_weights": weights, "name": weights}))
    (none_weights, _, none_loss), (auto_weights, labels, auto_loss) = calls
    assert none_weights is None
    torch.testing.assert_close(auto_weights, torch.tensor(inverse_class_frequency(labels, 2), dtype=torch.float32))
    assert auto_weights[0] > 5 * auto_weights[1]  # blue, the rare class, weighs more
    assert auto_loss != pytest.approx(none_loss, rel=1e-3)  # same seed and batches, another loss


def test_the_weighted_loss_is_the_weighted_cross_entropy():
    from classifier.engine.loop import StepContext, train_one_epoch
    from classifier.models import create_model

    torch.manual_seed(0)
    model = create_model("lenet5", num_classes=2, in_chans=1).train()
    x, y = torch.randn(6, 1, 28, 28), torch.tensor([0, 0, 0, 0, 0, 1])
    weights = torch.tensor(inverse_class_frequency(y.numpy(), 2), dtype=torch.float32)
    torch.manual_seed(1)  # the same dropout masks in both forward passes
    with torch.no_grad():
        per_sample = F.cross_entropy(model(x), y, reduction="none")
    expected = float((per_sample * weights[y]).sum() / weights[y].sum())

    class OneBatch(list):
        def iter_from(self, start):
            return iter(self[start:])

    ctx = StepContext(torch.optim.SGD(model.parameters(), lr=0.0), torch.device("cpu"), class_weights=weights)
    torch.manual_seed(1)
    sums, _ = train_one_epoch(model, OneBatch([(x, y)]), ctx, step=0)
    assert sums.mean_loss == pytest.approx(expected, rel=1e-5)
    assert sums.mean_loss != pytest.approx(float(per_sample.mean()), rel=1e-3)


def test_invalid_sampler_and_class_weights_are_config_errors():
    with pytest.raises(ClassifierError, match="invalid sampler 'even'"):
        make_config({"sampler": "even"})
    with pytest.raises(ClassifierError, match="invalid class_weights 'inverse'"):
        make_config({"class_weights": "inverse"})
