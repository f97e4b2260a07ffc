import pytest
import torch

from distill.data.base import BatchSampler
from distill.data.digits import digits
from distill.data.fashion_mnist import available, fashion_mnist


def test_digits_split_labels_and_validation():
    b = digits(layout="flat", labeled_fraction=0.1, val_fraction=0.1)
    assert b.input_shape == (64,) and b.num_classes == 10
    n = len(b.train) + len(b.val) + len(b.test)
    assert n == 1797
    # labeled fraction per class, teacher view has every label, validation fully labeled
    assert 0.08 < b.labeled_fraction < 0.13
    assert (b.teacher_train.y >= 0).all() and (b.val.y >= 0).all()
    assert set(b.val.y.tolist()) == set(range(10))
    # no validation image is also a training image
    tr = {tuple(r.tolist()) for r in b.train.x}
    assert not any(tuple(r.tolist()) in tr for r in b.val.x[:50])


def test_batch_sampler_order_depends_only_on_seed_and_epoch_and_shards_cover_the_batch():
    a, b = BatchSampler(10, 4, seed=3), BatchSampler(10, 4, seed=3)
    a.set_epoch(2), b.set_epoch(2)
    assert [x.tolist() for x in a] == [x.tolist() for x in b]
    full = BatchSampler(10, 4, seed=3, drop_last=True)
    r0, r1 = BatchSampler(10, 4, seed=3, rank=0, world=2), BatchSampler(10, 4, seed=3, rank=1, world=2)
    for whole, p0, p1 in zip(full, r0, r1):
        assert torch.equal(whole, torch.cat([p0, p1]))
    with pytest.raises(ValueError, match="divisible"):
        BatchSampler(10, 3, world=2)


@pytest.mark.skipif(not available(), reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_from_the_debian_package():
    b = fashion_mnist(train_subset=500, test_subset=100)
    assert b.train.x.shape == (500, 1, 28, 28) and len(b.test) == 100
    assert 0.0 <= float(b.train.x.min()) and float(b.train.x.max()) <= 1.0
    assert b.class_names[0] == "T-shirt/top"
