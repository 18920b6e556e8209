"""Network architectures: CNN = g(f) (paper §2.3.1, Table 3, Eq. 15).

* ``f`` — feature extractor: image (1, H, W) → 112 features.
* ``g`` — head: ``b`` × 112 features → dense 44 (ReLU) → dense 1 → output activation; ``b = 1``
  for single-image networks (θ_Df, θ_ρ), ``b = ν`` for the multi-image networks (θ0, θ1), which
  apply the same f to each of the ν images and concatenate the features (Eq. 15).

Feature extractors:

``paper``
    Table 3: 2×2 average pooling (only for inputs larger than 256 px), then unpadded 3×3 convolutions + batch norm + ReLU with
    8, 16, 32 | 64, 64 | 128, 128 | 256, 256 channels (| = 2×2 max pooling, also after the last
    block), flatten, dense 224 + ReLU, dense 112 + ReLU. At 512² input the flatten has 36,864
    values and the network 9,457,881 trainable parameters for b = 1 (see :func:`paper_parameter_table`).
``compact``
    For CPUs: a stride-2 3×3 stem (16 channels) and five depthwise-separable blocks (16, 32, 64, 96, 128
    channels, each followed by 2×2 max pooling), then global average *and* max pooling (so the
    extent of the aggregate survives), dense 112 + ReLU. ~58 k parameters; about 10× faster
    than ``paper`` per image (see the book's estimator chapter).
``resnet18``, ``inception``
    Alternatives for the architecture comparison (paper Table 6), written here because
    torchvision does not import beside this torch build.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["FEATURE_DIM", "ACTIVATIONS", "PaperFeatures", "CompactFeatures", "Head", "Estimator",
           "build_network", "count_parameters", "paper_parameter_table", "ARCHITECTURES"]

FEATURE_DIM = 112


class ScaledSigmoid(nn.Module):
    """γ(x) = α·σ(x) + β; for D_f the paper's α = 1.4, β = 1.3 (outputs in (1.3, 2.7))."""

    def __init__(self, alpha: float = 1.4, beta: float = 1.3):
        super().__init__()
        self.alpha, self.beta = alpha, beta

    def forward(self, x):
        return self.alpha * torch.sigmoid(x) + self.beta


ACTIVATIONS = {"scaled_sigmoid": ScaledSigmoid, "sigmoid": nn.Sigmoid, "relu": nn.ReLU,
               "identity": nn.Identity}


def _conv_bn_relu(cin, cout):
    return [nn.Conv2d(cin, cout, 3), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class PaperFeatures(nn.Module):
    """The paper's f (Table 3 layers 1–17)."""

    CHANNELS = ((8, 16, 32), (64, 64), (128, 128), (256, 256))

    def __init__(self, input_size: int = 512, avg_pool: bool | None = None):
        super().__init__()
        # The paper pools its 512² images to 256² first; smaller inputs skip that step.
        self.avg_pool = input_size > 256 if avg_pool is None else bool(avg_pool)
        layers: list[nn.Module] = [nn.AvgPool2d(2)] if self.avg_pool else []
        cin = 1
        for block in self.CHANNELS:
            for cout in block:
                layers += _conv_bn_relu(cin, cout)
                cin = cout
            layers.append(nn.MaxPool2d(2))
        self.conv = nn.Sequential(*layers)
        try:
            with torch.no_grad():
                self.conv.eval()
                n_flat = self.conv(torch.zeros(1, 1, input_size, input_size)).numel()
                self.conv.train()
        except RuntimeError:
            n_flat = 0
        if n_flat == 0:
            raise ValueError(f"input_size={input_size} is too small for the paper network; "
                             f"accepted range [{156 if self.avg_pool else 78}, inf) px")
        self.flatten_size = n_flat
        self.dense = nn.Sequential(nn.Flatten(), nn.Linear(n_flat, 224), nn.ReLU(inplace=True),
                                   nn.Linear(224, FEATURE_DIM), nn.ReLU(inplace=True))

    def forward(self, x):
        return self.dense(self.conv(x))


class _SeparableBlock(nn.Sequential):
    def __init__(self, cin, cout):
        super().__init__(nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False),
                         nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.MaxPool2d(2))


class CompactFeatures(nn.Module):
    """A compact f for CPUs: depthwise-separable blocks and global pooling."""

    WIDTHS = (16, 32, 64, 96, 128)

    def __init__(self, input_size: int = 128):
        super().__init__()
        if input_size < 64:
            raise ValueError(f"input_size={input_size} is too small for the compact network; "
                             "accepted range [64, inf) px")
        # A stride-2 stem halves the resolution at once: 4× less work in the first blocks, which
        # dominate the cost on CPUs (depthwise convolutions at full resolution are slow there).
        layers: list[nn.Module] = [nn.Conv2d(1, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16),
                                   nn.ReLU(inplace=True)]
        cin = 16
        for cout in self.WIDTHS:
            layers.append(_SeparableBlock(cin, cout))
            cin = cout
        self.conv = nn.Sequential(*layers)
        self.dense = nn.Sequential(nn.Linear(2 * cin, FEATURE_DIM), nn.ReLU(inplace=True))

    def forward(self, x):
        h = self.conv(x)
        pooled = torch.cat([h.mean(dim=(-2, -1)), h.amax(dim=(-2, -1))], dim=1)
        return self.dense(pooled)


class _BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
                                  nn.ReLU(inplace=True), nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(cout))
        self.skip = nn.Identity() if stride == 1 and cin == cout else \
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.relu(self.body(x) + self.skip(x))


class ResNet18Features(nn.Module):
    """ResNet-18 (He et al. 2016) for one-channel images, global average pooling, dense 112."""

    def __init__(self, input_size: int = 128):
        super().__init__()
        if input_size < 32:
            raise ValueError(f"input_size={input_size} is too small for ResNet-18; accepted range [32, inf) px")
        layers: list[nn.Module] = [nn.Conv2d(1, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
                                   nn.MaxPool2d(3, 2, 1)]
        cin = 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [_BasicBlock(cin, cout, stride), _BasicBlock(cout, cout, 1)]
            cin = cout
        self.conv = nn.Sequential(*layers)
        self.dense = nn.Sequential(nn.Linear(512, FEATURE_DIM), nn.ReLU(inplace=True))

    def forward(self, x):
        return self.dense(self.conv(x).mean(dim=(-2, -1)))


class _InceptionModule(nn.Module):
    """Four parallel branches (1×1; 1×1→3×3; 1×1→3×3→3×3; 3×3 max pool→1×1), concatenated."""

    def __init__(self, cin, c1, c3, c5, cp):
        super().__init__()

        def cbr(i, o, k):
            return [nn.Conv2d(i, o, k, padding=k // 2, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True)]

        self.b1 = nn.Sequential(*cbr(cin, c1, 1))
        self.b3 = nn.Sequential(*cbr(cin, c3 // 2, 1), *cbr(c3 // 2, c3, 3))
        self.b5 = nn.Sequential(*cbr(cin, c5 // 2, 1), *cbr(c5 // 2, c5, 3), *cbr(c5, c5, 3))
        self.bp = nn.Sequential(nn.MaxPool2d(3, 1, 1), *cbr(cin, cp, 1))

    def forward(self, x):
        return torch.cat([self.b1(x), self.b3(x), self.b5(x), self.bp(x)], dim=1)


class InceptionFeatures(nn.Module):
    """An Inception-style f (Szegedy et al. 2015): a strided stem and four inception modules
    with max pooling between them, global average pooling, dense 112."""

    def __init__(self, input_size: int = 128):
        super().__init__()
        if input_size < 32:
            raise ValueError(f"input_size={input_size} is too small for the Inception network; "
                             "accepted range [32, inf) px")
        stem = [nn.Conv2d(1, 32, 5, 2, 2, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        self.conv = nn.Sequential(*stem, _InceptionModule(32, 16, 32, 8, 8), nn.MaxPool2d(2),
                                  _InceptionModule(64, 32, 64, 16, 16), nn.MaxPool2d(2),
                                  _InceptionModule(128, 48, 96, 24, 24), nn.MaxPool2d(2),
                                  _InceptionModule(192, 64, 128, 32, 32))
        self.dense = nn.Sequential(nn.Linear(256, FEATURE_DIM), nn.ReLU(inplace=True))

    def forward(self, x):
        return self.dense(self.conv(x).mean(dim=(-2, -1)))


ARCHITECTURES = {"paper": PaperFeatures, "compact": CompactFeatures, "resnet18": ResNet18Features,
                 "inception": InceptionFeatures}


class Head(nn.Module):
    """The paper's g: dense 44 + ReLU, dense 1 (Table 3 layers 18–19)."""

    def __init__(self, b: int = 1):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(b * FEATURE_DIM, 44), nn.ReLU(inplace=True), nn.Linear(44, 1))

    def forward(self, z):
        return self.net(z).squeeze(-1)


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    """NHWC memory layout: 1.5–2× faster convolutions on CPUs (and fine on GPUs)."""
    return x.contiguous(memory_format=torch.channels_last)


class Estimator(nn.Module):
    """CNN = activation(g(f(·))) for single images (``nu = 1``) or groups of ν images (Eq. 15).

    Input: (B, 1, H, W) for ``nu = 1``, (B, ν, 1, H, W) otherwise. Output: (B,).
    """

    def __init__(self, features: nn.Module, nu: int, activation: str):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation={activation!r}; accepted: {sorted(ACTIVATIONS)}")
        self.features = features
        self.nu = int(nu)
        self.head = Head(self.nu)
        self.activation = ACTIVATIONS[activation]()

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """g(f(x)) before the output activation."""
        if self.nu == 1:
            if x.dim() == 5:
                x = x[:, 0]
            return self.head(self.features(_channels_last(x)))
        b, nu = x.shape[:2]
        if nu != self.nu:
            raise ValueError(f"this network takes groups of nu={self.nu} images, got {nu}")
        z = self.features(_channels_last(x.reshape(b * nu, *x.shape[2:]))).reshape(b, nu * FEATURE_DIM)
        return self.head(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.logits(x))


def build_network(arch: str, input_size: int, nu: int = 1, activation: str = "identity") -> Estimator:
    """An :class:`Estimator` with feature extractor ``arch`` (see :data:`ARCHITECTURES`)."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"arch={arch!r}; accepted: {sorted(ARCHITECTURES)}")
    return Estimator(ARCHITECTURES[arch](input_size), nu, activation).to(memory_format=torch.channels_last)


def count_parameters(module: nn.Module) -> int:
    """Trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def paper_parameter_table(b: int = 1, input_size: int = 512) -> list[dict]:
    """Trainable parameters of each layer of the paper network, in Table 3's order.

    Rows: layer name, convolution/dense weights+biases, batch-norm (γ, β) parameters.
    """
    net = build_network("paper", input_size, nu=b)
    rows = []
    convs = [m for m in net.features.conv if isinstance(m, nn.Conv2d)]
    bns = [m for m in net.features.conv if isinstance(m, nn.BatchNorm2d)]
    for conv, bn in zip(convs, bns):
        rows.append({"layer": f"conv {conv.out_channels}", "weights": count_parameters(conv),
                     "batch_norm": count_parameters(bn)})
    dense = [m for m in net.features.dense if isinstance(m, nn.Linear)] + \
        [m for m in net.head.net if isinstance(m, nn.Linear)]
    for m in dense:
        rows.append({"layer": f"dense {m.out_features}", "weights": count_parameters(m), "batch_norm": 0})
    return rows
