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
    For CPUs: a stride-2 3×3 stem (16 channels) and five 3×3 convolution blocks (32, 64, 96, 128,
    128 channels, 2×2 max pooling between them), then global average *and* max pooling (so the
    extent of the aggregate survives), dense 112 + ReLU. 371,257 parameters with g; at 128² it
    trains 8.3× faster than ``paper`` at 128² and 46× faster than ``paper`` at the paper's 512²
    (``benchmarks/bench_training.py``; see the performance page).
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


class CompactFeatures(nn.Module):
    """A compact f for CPUs: a stride-2 stem, five 3×3 convolution blocks, global pooling.

    Layers (input 128² as in the quick profile): 3×3 stride-2 convolution, 16 channels (64²);
    3×3 convolutions with 32 | 64 | 96 | 128 | 128 channels (each with batch norm and ReLU; | =
    2×2 max pooling, so 64², 32², 16², 8², 4²); global average *and* global max pooling of the last
    map (the mean sees the aggregate's extent, the max its brightest stacks); dense 112 + ReLU.

    Design notes: during development on the quick dataset, plain 3×3 convolutions after the stem
    predicted ρ and the cluster sizes from single images better than depthwise-separable ones and
    ran faster on 2 CPU cores at this size (exploratory runs, not kept as a benchmark; notebook 9's
    Table 6 compares the architectures reproducibly). The stride-2 stem keeps a 24 nm particle
    (7 px at 3.4 nm/px) 3–4 px wide.
    """

    WIDTHS = (32, 64, 96, 128, 128)

    def __init__(self, input_size: int = 128, in_channels: int = 1, feature_dim: int = FEATURE_DIM):
        super().__init__()
        if input_size < 64:
            raise ValueError(f"input_size={input_size} is too small for the compact network; "
                             "accepted range [64, inf) px")
        self.feature_dim = int(feature_dim)
        layers: list[nn.Module] = [nn.Conv2d(in_channels, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16),
                                   nn.ReLU(inplace=True)]
        cin = 16
        for k, cout in enumerate(self.WIDTHS):
            if k > 0:
                layers.append(nn.MaxPool2d(2))
            layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
            cin = cout
        self.conv = nn.Sequential(*layers)
        self.dense = nn.Sequential(nn.Linear(2 * cin, self.feature_dim), nn.ReLU(inplace=True))

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
    """The paper's g: dense 44 + ReLU, dense 1 (Table 3 layers 18–19).

    ``outputs > 1`` (several values per input, e.g. the descriptors pretraining f) widens the
    last layer; the output then has shape (B, outputs) instead of (B,).
    """

    def __init__(self, b: int = 1, outputs: int = 1):
        super().__init__()
        self.outputs = int(outputs)
        self.net = nn.Sequential(nn.Linear(b * FEATURE_DIM, 44), nn.ReLU(inplace=True), nn.Linear(44, self.outputs))

    def forward(self, z):
        out = self.net(z)
        return out.squeeze(-1) if self.outputs == 1 else out


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    """NHWC memory layout: 1.5–2× faster convolutions on CPUs (and fine on GPUs)."""
    return x.contiguous(memory_format=torch.channels_last)


class Estimator(nn.Module):
    """CNN = activation(g(f(·))) for single images (``nu = 1``) or groups of ν images (Eq. 15).

    Input: (B, 1, H, W) for ``nu = 1``, (B, ν, 1, H, W) otherwise. Output: (B,), or
    (B, outputs) for ``outputs > 1``.
    """

    def __init__(self, features: nn.Module, nu: int, activation: str, outputs: int = 1):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation={activation!r}; accepted: {sorted(ACTIVATIONS)}")
        self.features = features
        self.nu = int(nu)
        self.head = Head(self.nu, outputs)
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

    def start_at(self, value: float) -> None:
        """Set g's last bias so that the output starts near ``value`` (e.g. the mean label).

        Spares the first epochs the job of finding the labels' mean and keeps a ReLU output
        (θ0, θ1) out of its dead zone.
        """
        value = torch.as_tensor(value, dtype=torch.float32)
        if isinstance(self.activation, ScaledSigmoid):
            value = (value - self.activation.beta) / self.activation.alpha
        if isinstance(self.activation, (nn.Sigmoid, ScaledSigmoid)):
            value = torch.logit(value.clamp(1e-3, 1 - 1e-3))
        with torch.no_grad():
            self.head.net[-1].bias.copy_(value.expand_as(self.head.net[-1].bias))


def build_network(arch: str, input_size: int, nu: int = 1, activation: str = "identity",
                  outputs: int = 1) -> Estimator:
    """An :class:`Estimator` with feature extractor ``arch`` (see :data:`ARCHITECTURES`)."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"arch={arch!r}; accepted: {sorted(ARCHITECTURES)}")
    return Estimator(ARCHITECTURES[arch](input_size), nu, activation, outputs).to(memory_format=torch.channels_last)


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
