"""The authors' published networks (zoo/croce-hein-2020): read exactly, and their test errors are the paper's.

The reference forward pass is written here in NumPy on the raw .mat arrays, in TensorFlow's own
conventions (NHWC tensors, HWIO kernels, 'SAME' padding by TensorFlow's rule, NHWC flattening),
with no torch conv: an error in mmru's translation of any convention shows as a different logit.
"""

import math
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from mmru.convert import ConversionError, from_mat, load_model
from mmru.convert.from_mat import LENET_SMALL_KEYS, tf_same_padding

ZOO = Path(__file__).resolve().parents[1] / "zoo" / "croce-hein-2020"
DATA = Path(__file__).resolve().parents[1] / "data"


def tf_conv_same(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray, stride: int) -> np.ndarray:
    """TensorFlow's conv2d(padding='SAME') on NHWC ``x`` with an HWIO ``kernel``, by explicit sums."""
    n, h, w, _ = x.shape
    kh, kw, _, c_out = kernel.shape
    out_h, out_w = math.ceil(h / stride), math.ceil(w / stride)
    pad_h = max((out_h - 1) * stride + kh - h, 0)
    pad_w = max((out_w - 1) * stride + kw - w, 0)
    xp = np.pad(x, ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)))
    out = np.zeros((n, out_h, out_w, c_out))
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, i : i + stride * out_h : stride, j : j + stride * out_w : stride, :]
            out += patch @ kernel[i, j]
    return out + bias.reshape(-1)


def tf_lenet_small(arrays: dict, x_nhwc: np.ndarray) -> np.ndarray:
    relu = lambda t: np.maximum(t, 0.0)  # noqa: E731
    h = relu(tf_conv_same(x_nhwc, arrays["weights_conv1"], arrays["biases_conv1"], 2))
    h = relu(tf_conv_same(h, arrays["weights_conv2"], arrays["biases_conv2"], 2))
    h = relu(h.reshape(len(h), -1) @ arrays["weights_fc1"] + arrays["biases_fc1"].reshape(-1))
    return h @ arrays["weights_fc2"] + arrays["biases_fc2"].reshape(-1)


def _images(name: str, n: int, channels: int, side: int) -> np.ndarray:
    """Real MNIST test images where `make data` placed them; else seeded uniform pixels (same shape)."""
    import torchvision

    root = DATA / ("MNIST" if name == "mnist" else "FashionMNIST") / "raw"
    if name in ("mnist", "fmnist") and root.is_dir():
        cls = torchvision.datasets.MNIST if name == "mnist" else torchvision.datasets.FashionMNIST
        return cls(str(DATA), train=False, download=False).data[:n].numpy()[..., None] / 255.0
    return np.random.default_rng(0).random((n, side, side, channels))


@pytest.mark.parametrize("name", ["mnist", "fmnist", "gts", "cifar10"])
def test_logits_equal_an_independent_tensorflow_convention_forward_pass(name):
    arrays = {k: v.astype(np.float64) for k, v in scipy.io.loadmat(ZOO / f"mmr_univ_{name}.mat").items()
              if not k.startswith("__")}
    channels = arrays["weights_conv1"].shape[2]
    side = 28 if channels == 1 else 32
    x = _images(name, 64, channels, side)
    expected = tf_lenet_small(arrays, x)
    net = from_mat(ZOO / f"mmr_univ_{name}.mat", dtype=torch.float64)
    assert net.input_shape == (channels, side, side)
    got = net(torch.from_numpy(x).permute(0, 3, 1, 2)).detach().numpy()
    assert np.abs(got - expected).max() <= 1e-5 * max(1.0, np.abs(expected).max())
    assert (got.argmax(1) == expected.argmax(1)).all()


def test_the_published_layout_is_cnn_small():
    from mmru.models import cnn_small

    net = from_mat(ZOO / "mmr_univ_mnist.mat")
    reference = cnn_small((1, 28, 28), 10)
    assert [tuple(p.shape) for p in net.parameters()] == [tuple(p.shape) for p in reference.parameters()]
    assert [getattr(l, "padding", None) for l in net.layers] == [getattr(l, "padding", None) for l in reference.layers]
    reference.load_state_dict(net.state_dict())  # the weights load into the configured model


def test_tensorflow_same_padding_rule():
    assert tf_same_padding(28, 4, 2) == (1, 1)
    assert tf_same_padding(14, 4, 2) == (1, 1)
    assert tf_same_padding(32, 4, 2) == (1, 1)
    assert tf_same_padding(27, 4, 2) == (1, 2)  # the odd pixel at the bottom / right
    assert tf_same_padding(5, 1, 2) == (0, 0)


def test_uneven_padding_is_refused_in_one_sentence():
    with pytest.raises(ConversionError, match="unevenly"):
        from_mat(ZOO / "mmr_univ_mnist.mat", input_shape=(1, 27, 27))


def test_other_mat_files_are_refused_naming_their_keys(tmp_path):
    path = tmp_path / "other.mat"
    scipy.io.savemat(path, {"W": np.ones((3, 3)), "b": np.zeros(3)})
    with pytest.raises(ConversionError, match="it holds W, b$"):
        load_model(path)
    bad = tmp_path / "broken.mat"
    bad.write_bytes(b"not a mat file at all")
    with pytest.raises(ConversionError, match="cannot be read as a MATLAB"):
        load_model(bad)


def test_layers_that_do_not_chain_are_refused(tmp_path):
    arrays = {k: v for k, v in scipy.io.loadmat(ZOO / "mmr_univ_mnist.mat").items() if k in LENET_SMALL_KEYS}
    arrays["biases_fc1"] = np.zeros((1, 99))
    path = tmp_path / "cut.mat"
    scipy.io.savemat(path, arrays)
    with pytest.raises(ConversionError, match="do not chain"):
        from_mat(path)


@pytest.mark.slow
@pytest.mark.parametrize("name, folder, published", [("mnist", "MNIST", 3.04), ("fmnist", "FashionMNIST", 18.57)])
def test_published_test_error_on_the_full_official_test_set(name, folder, published):
    import torchvision

    if not (DATA / folder / "raw").is_dir():
        pytest.skip(f"the official {folder} files are not in data/ (make data)")
    cls = torchvision.datasets.MNIST if name == "mnist" else torchvision.datasets.FashionMNIST
    test = cls(str(DATA), train=False, download=False)
    assert len(test) == 10_000
    net = load_model(ZOO / f"mmr_univ_{name}.mat", input_shape=(1, 28, 28))
    with torch.no_grad():
        wrong = int((net(test.data.float().div(255).unsqueeze(1)).argmax(1) != test.targets).sum())
    assert wrong == round(published * 100)  # 304 and 1857 of 10,000


def test_certify_py_refuses_a_path_given_to_model_naming_model_file():
    import subprocess
    import sys

    root = ZOO.parents[1]
    proc = subprocess.run([sys.executable, str(root / "certify.py"), f"model={ZOO / 'mmr_univ_mnist.mat'}"],
                          capture_output=True, text=True, cwd=root, timeout=300)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        f"error: certify.py reads a model file from model_file= (model= is train.py's architecture group): "
        f"python certify.py model_file={ZOO / 'mmr_univ_mnist.mat'} dataset=<name>"]


def test_the_published_model_certifies_through_the_api_as_its_converted_net():
    """mmru.certify takes the .mat path as it takes ONNX, and certifies exactly what from_mat's net
    certifies: same records (seconds aside), on points labelled so that some are misclassified."""
    import mmru

    x = torch.from_numpy(_images("mnist", 6, 1, 28)).permute(0, 3, 1, 2).float()
    net = from_mat(ZOO / "mmr_univ_mnist.mat")
    y = net(x).argmax(1)
    y[:2] = (y[:2] + 1) % 10  # two points the net gets wrong
    options = dict(eps={"l2": 0.3, "linf": 0.1}, bounds=["crown"], attack="none", mip=False)
    by_path = mmru.certify(str(ZOO / "mmr_univ_mnist.mat"), x, y, **options)
    by_net = mmru.certify(net, x, y, **options)
    strip = lambda rs: [{**vars(r), "seconds": None} for r in rs]  # noqa: E731
    assert strip(by_path.records) == strip(by_net.records)
    assert by_path.summary["test_error"] == pytest.approx(2 / 6)
    assert {r.status for r in by_path.records if r.index < 2} == {"attacked"}


def test_the_shipped_files_are_the_published_ones_and_are_recognised():
    from mmru.provenance import file_md5
    from mmru.zoo import PUBLISHED, model_file_run

    assert {file_md5(ZOO / p.file): p.file for p in PUBLISHED.values()} == {m: p.file for m, p in PUBLISHED.items()}
    run = model_file_run(ZOO / "mmr_univ_fmnist.mat", "fmnist", {"linf": 0.1})
    assert (run["regularizer"], run["epochs"], run["model_md5"]) == ("universal", 100, "ab36cbedb39b2eca6beb29fa9abe0f3a")
    assert run["source"].endswith("mmr_univ_fmnist.mat")
    # on another dataset it is just a model file: no claim about the paper's row
    other = model_file_run(ZOO / "mmr_univ_fmnist.mat", "mnist", {"linf": 0.1})
    assert other["regularizer"] == "mmr_univ_fmnist.mat" and "source" not in other
