"""Builders for ``arch=`` in the init_from tests (``tests/`` is on the path of the test process)."""

from torch import nn


def lenet_small(conv1_channels: int = 16) -> nn.Sequential:
    """cnn_small (conv 16 / 32 4x4 stride 2 pad 1, fc 100, fc 10 on 1x28x28) as a plain nn.Sequential."""
    return nn.Sequential(
        nn.Conv2d(1, conv1_channels, 4, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(conv1_channels, 32, 4, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
        nn.Linear(32 * 7 * 7, 100), nn.ReLU(), nn.Linear(100, 10),
    )


def lenet_small_8() -> nn.Sequential:
    """As :func:`lenet_small` with 8 first-layer channels: its weights fit no cnn_small."""
    return lenet_small(8)
