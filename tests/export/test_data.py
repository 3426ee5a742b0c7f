"""CUB layout reading, the training augmentation and the resumable shuffle."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from spa_export.data import (
    CubTrainSet,
    DatasetError,
    EpochSampler,
    read_cub,
    resize_size,
    train_transform,
)


def test_read_cub(tmp_path, make_cub_dataset):
    root = make_cub_dataset(tmp_path, num_classes=2, per_class=4, size=(48, 32), seed=1)
    images = read_cub(root)
    assert len(images) == 8 and [i.label for i in images] == [0] * 4 + [1] * 4
    assert [i.is_train for i in images[:4]] == [True, True, True, False]
    assert all(i.path.is_file() for i in images)
    with Image.open(images[0].path) as image:
        assert image.size == (48, 32)
    dataset = CubTrainSet(images, (32, 32), seed=0)
    tensor, label = dataset[0]
    assert tensor.shape == (3, 32, 32) and tensor.dtype == torch.float32 and label == 0


@pytest.mark.parametrize(("file", "content", "message"), [
    ("images.txt", None, "no images.txt"),
    ("image_class_labels.txt", "1 0\n", "no class label from 1 up"),
    ("train_test_split.txt", "1 yes\n", "no 0/1 entry"),
    ("images.txt", "one a.jpg\n", "expected `<image id> <value>`"),
])
def test_read_cub_errors(tmp_path, make_cub_dataset, file, content, message):
    root = make_cub_dataset(tmp_path, num_classes=1, per_class=1, size=16, seed=0)
    if content is None:
        (root / file).unlink()
    else:
        (root / file).write_text(content)
    with pytest.raises(DatasetError, match=message):
        read_cub(root)


def test_resize_keeps_the_authors_ratio():
    assert resize_size((224, 224)) == (256, 256)
    assert resize_size((112, 112)) == (128, 128)
    assert resize_size((224, 112)) == (256, 128)


def test_train_transform_is_a_normalised_crop_with_flip():
    array = np.zeros((300, 200, 3), np.uint8)
    array[:, :100] = 255  # left half white
    image = Image.fromarray(array)
    tensors = [train_transform(image, (224, 224), np.random.default_rng(seed)) for seed in range(12)]
    assert all(t.shape == (3, 224, 224) for t in tensors)
    white = (1 - 0.485) / 0.229
    left_white = [bool(t[0, :, 0].mean() > white - 0.01) for t in tensors]
    assert any(left_white) and not all(left_white)  # some crops are flipped
    torch.testing.assert_close(train_transform(image, (224, 224), np.random.default_rng(3)), tensors[3])


def test_epoch_sampler_is_a_seeded_permutation_that_can_skip():
    sampler = EpochSampler(10, seed=4)
    sampler.set_epoch(2)
    order = list(sampler)
    assert sorted(order) == list(range(10))
    sampler.set_epoch(3)
    assert list(sampler) != order
    sampler.set_epoch(2, skip=4)
    assert list(sampler) == order[4:] and len(sampler) == 6
