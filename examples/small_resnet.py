"""A small ResNet-style CNN (BatchNorm, skip connections) on synthetic CIFAR-shaped images, for
trying `landscope probe` on a CNN without downloading anything:

    landscope probe --model examples/small_resnet.py:model --data examples/small_resnet.py:data

``data()`` makes 2,000 seeded 3×16×16 images whose class (one of 10) sets a faint pattern
under the noise; ``model()`` trains the network on them for 3 epochs of Adam (about 20 s on two
CPU cores) and returns it, so the probe looks at a point part-way through training.
"""

from __future__ import annotations

import torch
from torch import nn

SAMPLES, CLASSES, SIDE = 2000, 10, 16


def data(samples: int = SAMPLES, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (samples, 3, 16, 16) and labels: a class pattern plus unit noise."""
    g = torch.Generator().manual_seed(seed)
    patterns = torch.randn(CLASSES, 3, SIDE, SIDE, generator=g)
    y = torch.randint(0, CLASSES, (samples,), generator=g)
    X = 0.6 * patterns[y] + torch.randn(samples, 3, SIDE, SIDE, generator=g)
    return X, y


class Block(nn.Module):
    """conv-BN-ReLU-conv-BN plus the input (a 1×1 projection where the shape changes)."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.skip = nn.Sequential() if stride == 1 and c_in == c_out else nn.Sequential(
            nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.skip(x))


class SmallResNet(nn.Module):
    def __init__(self, width: int = 12):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU())
        self.blocks = nn.Sequential(Block(width, width, 1), Block(width, 2 * width, 2),
                                    Block(2 * width, 2 * width, 1))
        self.head = nn.Linear(2 * width, CLASSES)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


def model(epochs: int = 3, seed: int = 0) -> nn.Module:
    """The network after ``epochs`` of Adam (batch 64, lr 1e-2) on :func:`data`."""
    torch.manual_seed(seed)
    net = SmallResNet()
    X, y = data()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    order = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(X), generator=order).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(net(X[idx]), y[idx]).backward()
            opt.step()
    return net.eval()
