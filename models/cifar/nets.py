"""Five small CIFAR-10 (32x32 RGB, 10 classes) networks, each exercising different ONNX ops.

* :class:`ResNet`: ResNet-20-like; Conv, BatchNormalization, Relu, residual Add, global pooling.
* :class:`MobileNetV2`: width 0.5, CIFAR strides; depthwise Conv, ReLU6 (Clip), inverted residuals.
* :class:`EfficientNet`: EfficientNet-B0 scaled down; SiLU, squeeze-and-excitation, depthwise Conv.
* :class:`ConvNeXt`: 7x7 depthwise Conv, LayerNorm, GELU, layer scale, patch-2 stem.
* :class:`ViT`: patch embedding, MatMul multi-head attention, Softmax, LayerNorm, GELU.

Every model maps float32 [N,3,32,32] (see ``data.preprocess``) to logits [N,10].
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    """Conv (no bias, 'same' padding) + BatchNorm."""
    return [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]


# --- ResNet ------------------------------------------------------------------------------------

class BasicBlock(nn.Module):
    """relu(shortcut(x) + bn(conv(relu(bn(conv(x)))))); 1x1 conv shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(*conv_bn(cin, cout, 3, stride), nn.ReLU(inplace=True),
                                  *conv_bn(cout, cout, 3))
        self.shortcut = (nn.Identity() if stride == 1 and cin == cout
                         else nn.Sequential(*conv_bn(cin, cout, 1, stride)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.shortcut(x) + self.body(x))


class ResNet(nn.Module):
    """ResNet-8-like: 3x3 stride-2 stem, three stages of basic blocks (16, 8, 4 px maps), global
    average pool, linear. The stride-2 stem makes it four times cheaper than the classic CIFAR
    ResNets (whose first stage runs at 32x32), which matters for CPU training."""

    def __init__(self, widths: tuple[int, ...] = (32, 64, 128), blocks: int = 1,
                 stem_stride: int = 2, num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = [*conv_bn(3, widths[0], 3, stem_stride), nn.ReLU(inplace=True)]
        cin = widths[0]
        for i, w in enumerate(widths):
            for j in range(blocks):
                layers.append(BasicBlock(cin, w, 2 if i > 0 and j == 0 else 1))
                cin = w
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean((2, 3)))


# --- MobileNetV2 -------------------------------------------------------------------------------

def _round8(c: float) -> int:
    """Round a channel count to a multiple of 8 (never down by more than 10 %), as MobileNets do."""
    r = max(8, int(c + 4) // 8 * 8)
    return r + 8 if r < 0.9 * c else r


class InvertedResidual(nn.Module):
    """1x1 expand (ReLU6) -> 3x3 depthwise (ReLU6) -> 1x1 linear projection; + x when shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [*conv_bn(cin, hidden, 1), nn.ReLU6(inplace=True)]
        layers += [*conv_bn(hidden, hidden, 3, stride, groups=hidden), nn.ReLU6(inplace=True),
                   *conv_bn(hidden, cout, 1)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.residual else self.body(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 (width 0.5) for 32x32 inputs: 17 inverted residual blocks on 16, 8, 4 px maps."""

    # (expansion t, channels c, repeats n, stride s) of the ImageNet network (all 17 blocks), with
    # the stride-2 stem kept and only two more stride-2 stages: maps of 16x16 (stem and first
    # block), 8x8 and 4x4, so that the network trains in minutes on a CPU.
    CONFIG = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 1), (6, 64, 4, 2),
              (6, 96, 3, 1), (6, 160, 3, 1), (6, 320, 1, 1))

    def __init__(self, width: float = 0.5, last: int = 640, stem_stride: int = 2,
                 config: tuple[tuple[int, int, int, int], ...] | None = None,
                 num_classes: int = 10) -> None:
        super().__init__()
        cin = _round8(32 * width)
        layers: list[nn.Module] = [*conv_bn(3, cin, 3, stem_stride), nn.ReLU6(inplace=True)]
        for t, c, n, s in config or self.CONFIG:
            cout = _round8(c * width)
            for j in range(n):
                layers.append(InvertedResidual(cin, cout, s if j == 0 else 1, t))
                cin = cout
        layers += [*conv_bn(cin, last, 1), nn.ReLU6(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.1), nn.Linear(last, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean((2, 3)))


# --- EfficientNet ------------------------------------------------------------------------------

class SqueezeExcite(nn.Module):
    """x * sigmoid(conv(silu(conv(global_avg_pool(x)))))."""

    def __init__(self, channels: int, squeezed: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, squeezed, 1)
        self.expand = nn.Conv2d(squeezed, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.expand(F.silu(self.reduce(s))))


class MBConv(nn.Module):
    """EfficientNet block: 1x1 expand (SiLU) -> kxk depthwise (SiLU) -> SE -> 1x1 projection."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [*conv_bn(cin, hidden, 1), nn.SiLU(inplace=True)]
        layers += [*conv_bn(hidden, hidden, k, stride, groups=hidden), nn.SiLU(inplace=True),
                   SqueezeExcite(hidden, max(1, cin // 4)), *conv_bn(hidden, cout, 1)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.residual else self.body(x)


class EfficientNet(nn.Module):
    """EfficientNet-B0 scaled to CIFAR: width 0.5, fewer repeats, 16, 8, 4 px maps."""

    # (expansion, kernel, stride, channels, repeats): B0's seven stages (repeats 1,2,2,3,3,4,1
    # there) with 9 blocks in all, the stride-2 stem kept and two more stride-2 stages: maps of
    # 16x16 (stem and first block), 8x8 and 4x4, so that the network trains in minutes on a CPU.
    CONFIG = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 1), (6, 5, 1, 40, 1), (6, 3, 2, 80, 2),
              (6, 5, 1, 112, 1), (6, 5, 1, 192, 2), (6, 3, 1, 320, 1))

    def __init__(self, width: float = 0.5, last: int = 640, stem_stride: int = 2,
                 config: tuple[tuple[int, int, int, int, int], ...] | None = None,
                 num_classes: int = 10) -> None:
        super().__init__()
        cin = _round8(32 * width)
        layers: list[nn.Module] = [*conv_bn(3, cin, 3, stem_stride), nn.SiLU(inplace=True)]
        for e, k, s, c, n in config or self.CONFIG:
            cout = _round8(c * width)
            for j in range(n):
                layers.append(MBConv(cin, cout, k, s if j == 0 else 1, e))
                cin = cout
        layers += [*conv_bn(cin, last, 1), nn.SiLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean((2, 3)))


# --- ConvNeXt ----------------------------------------------------------------------------------

class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW tensor (transposed to NHWC and back)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    """x + gamma * Linear(GELU(Linear(LayerNorm(dwconv7x7(x))))), the MLP in NHWC."""

    def __init__(self, dim: int, layer_scale: float = 1e-6) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pw1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pw2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.gamma * self.pw2(self.act(self.pw1(self.norm(y))))
        return x + y.permute(0, 3, 1, 2)


class ConvNeXt(nn.Module):
    """ConvNeXt with a 2x2/2 patch stem (16x16 maps), four stages, LayerNorm + 2x2/2 downsampling."""

    def __init__(self, dims: tuple[int, ...] = (32, 64, 128, 192),
                 depths: tuple[int, ...] = (1, 1, 3, 1), num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, dims[0], 2, 2), LayerNorm2d(dims[0], eps=1e-6)]
        for i, (dim, depth) in enumerate(zip(dims, depths)):
            if i > 0:
                layers += [LayerNorm2d(dims[i - 1], eps=1e-6), nn.Conv2d(dims[i - 1], dim, 2, 2)]
            layers += [ConvNeXtBlock(dim) for _ in range(depth)]
        self.features = nn.Sequential(*layers)
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head = nn.Linear(dims[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.features(x).mean((2, 3))))


# --- Vision Transformer ------------------------------------------------------------------------

class Attention(nn.Module):
    """Multi-head self-attention written with MatMul and Softmax (no fused kernel)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        qkv = self.qkv(x).reshape(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = torch.softmax((q * self.scale) @ k.transpose(-2, -1), dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(n, t, d))


class TransformerBlock(nn.Module):
    """Pre-norm block: x + attn(LN(x)); x + MLP(LN(x)) with GELU."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(),
                                 nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """Vision Transformer: 4x4 patches (64 tokens), learned positions, mean-pooled tokens, linear head."""

    def __init__(self, dim: int = 128, depth: int = 4, heads: int = 4, mlp_ratio: int = 2,
                 patch: int = 4, num_classes: int = 10) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        self.pos = nn.Parameter(torch.randn(1, (32 // patch) ** 2, dim) * 0.02)
        self.blocks = nn.Sequential(*[TransformerBlock(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos
        return self.head(self.norm(self.blocks(x)).mean(1))


MODELS = {
    "resnet": ResNet,
    "mobilenetv2": MobileNetV2,
    "efficientnet": EfficientNet,
    "convnext": ConvNeXt,
    "vit": ViT,
}


def build(name: str) -> nn.Module:
    """A freshly initialised model by name (one of :data:`MODELS`)."""
    return MODELS[name]()
