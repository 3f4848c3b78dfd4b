import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

import clipkit as ck


def test_regression_is_seeded_sorted_and_noisy_around_the_target():
    x, y = ck.data.regression(n=300, noise=0.1, seed=3)
    x2, y2 = ck.data.regression(n=300, noise=0.1, seed=3)
    assert x.shape == (300, 1) and y.shape == (300, 1)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert bool((x[1:] >= x[:-1]).all()) and float(x.min()) >= -1 and float(x.max()) <= 1
    residual = y - ck.data.regression_target(x)
    assert 0.07 < float(residual.std()) < 0.13
    assert float(y.mean()) > 1.0  # the offset that separates the label mean from 0
    assert not torch.equal(y, ck.data.regression(n=300, noise=0.1, seed=4)[1])


@pytest.mark.parametrize("bad", [dict(n=1), dict(n=2.5), dict(noise=-0.1), dict(seed=1.5),
                                 dict(dtype="float64"), dict(dtype=torch.int64)])
def test_regression_rejects_bad_arguments(bad):
    with pytest.raises(ValueError, match="regression"):
        ck.data.regression(**bad)


def _write_idx(path, array, compress):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(
        int(s).to_bytes(4, "big") for s in array.shape
    )
    raw = header + array.astype(np.uint8).tobytes()
    if compress:
        raw = gzip.compress(raw)
        path = path.with_name(path.name + ".gz")
    path.write_bytes(raw)


@pytest.mark.parametrize("compress", [True, False])
@pytest.mark.parametrize("layout", ["fashion-mnist", "FashionMNIST/raw"])
def test_load_reads_local_idx_files(tmp_path, compress, layout):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(12, 28, 28))
    labels = rng.integers(0, 10, size=12)
    folder = tmp_path / layout
    folder.mkdir(parents=True)
    _write_idx(folder / "t10k-images-idx3-ubyte", images, compress)
    _write_idx(folder / "t10k-labels-idx1-ubyte", labels, compress)
    x, y = ck.data.fashion_mnist(train=False, root=tmp_path, download=False)
    assert x.shape == (12, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    np.testing.assert_allclose(x[:, 0].numpy(), images / 255.0, rtol=0, atol=1e-7)
    np.testing.assert_array_equal(y.numpy(), labels)
    xs, ys = ck.data.fashion_mnist(train=False, root=tmp_path, download=False, n=5, seed=1)
    assert xs.shape[0] == 5 and len(set(ys.tolist())) >= 1
    assert ck.data.fashion_mnist(train=False, root=tmp_path, download=False, n=12)[0].shape[0] == 12
    with pytest.raises(ValueError, match=r"n=13, but the fashion-mnist test split has 12 images"):
        ck.data.fashion_mnist(train=False, root=tmp_path, download=False, n=13)


def test_data_root_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPKIT_DATA", str(tmp_path))
    assert ck.data.data_root() == tmp_path
    assert ck.data.data_root("/elsewhere") != tmp_path


def test_a_relative_data_root_is_taken_from_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CLIPKIT_DATA", "../shared/data")
    assert ck.data.data_root() == tmp_path / ".." / "shared" / "data"
    assert ck.data.data_root().is_absolute()
    assert ck.data.data_root("here") == tmp_path / "here"


def test_missing_files_name_the_files_and_the_folder(tmp_path):
    with pytest.raises(ck.data.DataNotFoundError) as err:
        ck.data.mnist(train=True, root=tmp_path, download=False)
    msg = str(err.value)
    assert "train-images-idx3-ubyte" in msg and str(tmp_path / "mnist") in msg
    assert "CLIPKIT_DATA" in msg
    assert "ck.data.train_test('mnist') divides the test split" in msg  # the way round it


def test_a_failed_download_leaves_no_folders_behind(tmp_path, monkeypatch):
    import torchvision

    class Offline:  # torchvision's layout: it makes <root>/<Class>/raw, then fails to fetch
        def __init__(self, root, train, download):
            (Path(root) / "FashionMNIST" / "raw").mkdir(parents=True)
            raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", Offline)
    (tmp_path / "kept").mkdir()
    typo = tmp_path / "kept" / "dtaa" / "root"  # a mistyped root, two folders deep
    with pytest.raises(ck.data.DataNotFoundError, match="torchvision failed: Error downloading"):
        ck.data.load("fashion-mnist", root=typo)
    assert list((tmp_path / "kept").iterdir()) == []  # what existed before stays


def test_unknown_dataset_is_named():
    with pytest.raises(ValueError, match="cifar.*accepted: mnist, fashion-mnist"):
        ck.data.load("cifar")


def test_a_split_named_by_a_string_is_refused_not_read_as_true():
    with pytest.raises(ValueError, match=r"train must be True .* or False .*got 'test'"):
        ck.data.load("mnist", train="test", download=False)


def test_hold_out_needs_x_and_y_of_one_length():
    with pytest.raises(ValueError, match=r"different lengths \(10 and 9\)"):
        ck.data.hold_out((torch.zeros(10, 2), torch.zeros(9)), 0.2)


@pytest.mark.realdata
def test_real_fashion_mnist(data_root):
    x, y = ck.data.fashion_mnist(train=True, root=data_root, download=False)
    assert x.shape == (60000, 1, 28, 28) and y.shape == (60000,)
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert torch.bincount(y).tolist() == [6000] * 10
    xt, yt = ck.data.fashion_mnist(train=False, root=data_root, download=False, n=100)
    assert xt.shape == (100, 1, 28, 28)


@pytest.mark.realdata
def test_real_mnist_test_split_and_missing_train_images(data_root):
    if not (data_root / "mnist").is_dir():
        pytest.skip("no mnist folder")
    x, y = ck.data.mnist(train=False, root=data_root, download=False)
    assert x.shape == (10000, 1, 28, 28) and int(y.max()) == 9
    if not any((data_root / "mnist").glob("train-images*")):
        with pytest.raises(ck.data.DataNotFoundError, match="train-images"):
            ck.data.mnist(train=True, root=data_root, download=False)


def test_hold_out_splits_off_a_seeded_fraction_without_overlap():
    x = torch.arange(50.0).view(50, 1)
    y = torch.arange(50)
    (xa, ya), (xb, yb) = ck.data.hold_out((x, y), 0.1, seed=3)
    assert len(ya) == 45 and len(yb) == 5  # the authors' int(0.9 n) training points
    assert sorted(torch.cat([ya, yb]).tolist()) == list(range(50))
    assert torch.equal(xa[:, 0].long(), ya) and torch.equal(xb[:, 0].long(), yb)
    (_, ya2), (_, yb2) = ck.data.hold_out((x, y), 0.1, seed=3)
    assert torch.equal(yb, yb2) and torch.equal(ya, ya2)
    assert not torch.equal(ck.data.hold_out((x, y), 0.1, seed=4)[1][1], yb)
    with pytest.raises(ValueError, match="fraction must be in"):
        ck.data.hold_out((x, y), 1.0)
    with pytest.raises(ValueError, match="leaves an empty part"):
        ck.data.hold_out((x[:1], y[:1]), 0.1)


def test_train_test_splits_a_lone_test_split_and_checks_its_sizes(tmp_path):
    """Without training images (MNIST offline), the test split is divided by a seeded
    permutation, the sentence says so, and n_train / n_test take seeded subsets."""
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(20, 28, 28))
    folder = tmp_path / "mnist"
    folder.mkdir()
    _write_idx(folder / "t10k-images-idx3-ubyte", images, True)
    _write_idx(folder / "t10k-labels-idx1-ubyte", np.arange(20) % 10, True)
    (xtr, ytr), (xte, yte), source = ck.data.train_test("mnist", root=tmp_path, download=False)
    assert len(ytr) == 16 and len(yte) == 4 and "TEST split" in source and "seed 0" in source
    # the two parts are disjoint and together the whole split
    rows = {tuple(r.flatten().tolist()) for r in torch.cat([xtr, xte])}
    assert len(rows) == 20
    (x5, y5), (x2, y2), _ = ck.data.train_test("mnist", root=tmp_path, download=False,
                                               n_train=5, n_test=2)
    assert len(y5) == 5 and len(y2) == 2
    again = ck.data.train_test("mnist", root=tmp_path, download=False, n_train=5, n_test=2)
    assert torch.equal(again[0][0], x5) and torch.equal(again[1][1], y2)
    for bad in ("5", True, 0, 2.5):
        with pytest.raises(ValueError, match=f"sizes must be positive ints or None, got {bad!r}"):
            ck.data.train_test("mnist", root=tmp_path, download=False, n_train=bad)


def test_train_test_refuses_a_bad_split_even_where_the_official_split_is_used(tmp_path):
    """``split`` only divides a lone test split, but a wrong value is named either way
    (it used to be ignored silently when the training images were there)."""
    rng = np.random.default_rng(2)
    folder = tmp_path / "mnist"
    folder.mkdir()
    for stem, n in (("train", 6), ("t10k", 4)):
        _write_idx(folder / f"{stem}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)), False)
        _write_idx(folder / f"{stem}-labels-idx1-ubyte", np.arange(n) % 10, False)
    (_, ytr), (_, yte), source = ck.data.train_test("mnist", root=tmp_path, download=False)
    assert (len(ytr), len(yte)) == (6, 4) and "official" in source
    for bad in (1.5, 0, "0.8", True, float("nan")):
        with pytest.raises(ValueError, match=r"split must be a number in \(0, 1\)"):
            ck.data.train_test("mnist", root=tmp_path, download=False, split=bad)


def test_a_gz_file_that_is_not_gzip_is_named(tmp_path):
    folder = tmp_path / "mnist"
    folder.mkdir()
    _write_idx(folder / "t10k-images-idx3-ubyte.gz", np.zeros((2, 28, 28), int), False)
    _write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.zeros(2, int), False)
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte\.gz is not a readable gzip"):
        ck.data.load("mnist", train=False, root=tmp_path, download=False)
