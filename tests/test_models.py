"""ReLUNet and its builders."""

import pytest
import torch
from torch import nn

from mmru.models import ReLUNet, cnn_small, mlp


@pytest.mark.parametrize("shape,hidden", [((1, 28, 28), 4804), ((3, 32, 32), 6244)])
def test_cnn_small_has_the_papers_hidden_units(shape, hidden):
    net = cnn_small(shape, 10)
    assert net.num_hidden == hidden  # DESIGN.md: 3136 + 1568 + 100 on MNIST
    assert net.layer_shapes[-1] == (10,)


def test_preactivations_end_with_logits_and_follow_the_relu_recursion():
    torch.manual_seed(0)
    net = cnn_small((1, 28, 28), 10)
    x = torch.rand(3, 1, 28, 28)
    zs = net.preactivations(x)
    assert [tuple(z.shape[1:]) for z in zs] == [(16, 14, 14), (32, 7, 7), (100,), (10,)]
    conv1, conv2, fc1, fc2 = net.layers
    h = torch.relu(conv1(x))
    torch.testing.assert_close(zs[1], conv2(h))
    h = torch.relu(conv2(h)).flatten(1)
    torch.testing.assert_close(zs[2], fc1(h))
    torch.testing.assert_close(net(x), fc2(torch.relu(fc1(h))))


def test_affine_layers_appear_in_application_order():
    net = mlp((2, 3), 4, widths=(5, 6))
    affine = [m for m in net.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    assert [m.out_features for m in affine] == [5, 6, 4]
    assert net.input_dim == 6 and net.hidden_sizes == [5, 6]


def test_only_affine_layers_are_accepted():
    with pytest.raises(TypeError, match="Conv2d / Linear"):
        ReLUNet([nn.Linear(2, 2), nn.ReLU()], (2,))


def test_layer_shapes_of_any_conv_geometry():
    """floor((H + 2 pad - kernel) / stride) + 1 per axis; the first Linear sees C * H * W inputs."""
    conv1 = nn.Conv2d(3, 2, (2, 5), stride=(3, 1), padding=(0, 2), bias=False)
    conv2 = nn.Conv2d(2, 4, 3, stride=2, padding=0)
    net = ReLUNet([conv1, conv2, nn.Linear(4 * 1 * 4, 5)], (3, 12, 10))
    assert net.layer_shapes == [(2, 4, 10), (4, 1, 4), (5,)]
    assert net.hidden_sizes == [80, 16] and net.num_hidden == 96 and net.num_classes == 5
