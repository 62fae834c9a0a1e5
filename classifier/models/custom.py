"""Small networks trained from scratch, at any input size (>= their ``min_size``) and channel count.

Each builder returns a ``Classifier`` whose backbone ends in pooled features, so all of them share the
toolkit's head, freezing and checkpoint handling. Widths are kwargs (``create_model(..., width=64)``).
"""
from __future__ import annotations

import torch
from torch import nn

from classifier.models.registry import Classifier, register_model


def conv_bn_relu(c_in: int, c_out: int, *, stride: int = 1, batch_norm: bool = True) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=not batch_norm),
        nn.BatchNorm2d(c_out) if batch_norm else nn.Identity(),
        nn.ReLU(inplace=True),
    )


def init_weights(module: nn.Module) -> nn.Module:
    """He init for convs (as torchvision's ResNet), unit/zero BatchNorm; Linear keeps PyTorch's default."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return module


def _wrap(backbone: nn.Module, num_features: int, num_classes: int, in_chans: int, drop_rate,
          default_drop: float = 0.0) -> Classifier:
    return Classifier(init_weights(backbone), num_features, num_classes, in_chans=in_chans,
                      drop_rate=default_drop if drop_rate is None else drop_rate)


# ------------------------------------------------------------------------------------------------ LeNet-5

class LeNet5Body(nn.Module):
    """conv5x5(6)-pool-conv5x5(16)-pool-FC120-FC84 with ReLU and max pooling (the modern reading of
    LeCun et al. 1998). padding=2 on the first conv keeps 28x28 inputs at 5x5 before the FCs, like the
    classic 32x32 unpadded; other sizes are brought to 5x5 by adaptive average pooling."""

    def __init__(self, in_chans: int, dropout: float = 0.0):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, 6, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(5), nn.Flatten(),
        )
        self.fc = nn.Sequential(
            nn.Linear(16 * 5 * 5, 120), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(120, 84), nn.ReLU(inplace=True),
        )

    def forward(self, x):
        return self.fc(self.features(x))


@register_model("lenet5", source="custom", min_size=12, default_size=28, cam_layer="backbone.features.4")
def lenet5(*, num_classes, in_chans=3, pretrained=False, drop_rate=None, dropout: float = 0.0):
    """LeNet-5; dropout>0 adds dropout after FC120 and before the head (the 2-dropout variant)."""
    return _wrap(LeNet5Body(in_chans, dropout), 84, num_classes, in_chans, drop_rate, default_drop=dropout)


@register_model("lenet5-dropout", source="custom", min_size=12, default_size=28, cam_layer="backbone.features.4")
def lenet5_dropout(*, num_classes, in_chans=3, pretrained=False, drop_rate=None, dropout: float = 0.2):
    """LeNet-5 with dropout 0.2 after FC120 and FC84."""
    return lenet5(num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate, dropout=dropout)


# ----------------------------------------------------------------------------------------------- VGG-like

class VGGNetBody(nn.Module):
    """3 blocks of 3x [conv3x3-BN-ReLU] at widths (w, 2w, 4w); max-pool after blocks 1 and 2; global
    average pool after block 3 (no big FC layers: the head reads 4w pooled features)."""

    def __init__(self, in_chans: int, width: int = 32, convs_per_block: int = 3):
        super().__init__()
        widths = (width, 2 * width, 4 * width)
        layers, c = [], in_chans
        for i, w in enumerate(widths):
            for _ in range(convs_per_block):
                layers.append(conv_bn_relu(c, w))
                c = w
            layers.append(nn.MaxPool2d(2) if i < len(widths) - 1 else nn.AdaptiveAvgPool2d(1))
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.num_features = c

    def forward(self, x):
        return self.features(x)


@register_model("vggnet", source="custom", min_size=8, default_size=32, cam_pooled=True,
                cam_layer=lambda m: f"backbone.features.{len(m.backbone.features) - 3}")  # last conv block
def vggnet(*, num_classes, in_chans=3, pretrained=False, drop_rate=None, width: int = 32,
           convs_per_block: int = 3):
    """VGG-style net: 9 conv3x3+BN layers in 3 blocks, widths (width, 2*width, 4*width)."""
    body = VGGNetBody(in_chans, width, convs_per_block)
    return _wrap(body, body.num_features, num_classes, in_chans, drop_rate)


# ------------------------------------------------------------------------------------------------ ResNets

class BasicBlock(nn.Module):
    """Two conv3x3-BN with an identity (or 1x1-conv projection) shortcut, as in He et al. 2016."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, batch_norm: bool = True):
        super().__init__()
        norm = (lambda c: nn.BatchNorm2d(c)) if batch_norm else (lambda c: nn.Identity())
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=not batch_norm)
        self.bn1 = norm(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=not batch_norm)
        self.bn2 = norm(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=not batch_norm),
                                          norm(c_out))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNetBody(nn.Module):
    """conv3x3 stem (no max-pool: inputs are small), 4 stages of BasicBlocks at widths w..8w, stride 2
    from stage 2, global average pool."""

    def __init__(self, in_chans: int, width: int = 16, layers=(2, 2, 2, 2)):
        super().__init__()
        self.stem = conv_bn_relu(in_chans, width)
        stages, c = [], width
        for i, n in enumerate(layers):
            w = width * 2 ** i
            blocks = [BasicBlock(c, w, stride=1 if i == 0 else 2)]
            blocks += [BasicBlock(w, w) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
            c = w
        self.stages = nn.Sequential(*stages)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.num_features = c

    def forward(self, x):
        return self.pool(self.stages(self.stem(x)))


@register_model("resnet", source="custom", min_size=8, default_size=32, cam_layer="backbone.stages", cam_pooled=True)
def resnet(*, num_classes, in_chans=3, pretrained=False, drop_rate=None, width: int = 16,
           layers=(2, 2, 2, 2)):
    """Small ResNet (ResNet-18 layout at width 16..128) for 28-64 px images."""
    body = ResNetBody(in_chans, width, tuple(layers))
    return _wrap(body, body.num_features, num_classes, in_chans, drop_rate)


# ------------------------------------------------------------------- deep nets: plain vs residual vs dense

class PlainBlock(nn.Module):
    """Two conv3x3-BN-ReLU, no shortcut: the baseline that gets harder to train as depth grows."""

    def __init__(self, c: int, batch_norm: bool = True):
        super().__init__()
        self.body = nn.Sequential(conv_bn_relu(c, c, batch_norm=batch_norm), conv_bn_relu(c, c, batch_norm=batch_norm))
        self.out_chans = c

    def forward(self, x):
        return self.body(x)


class ResidualBlock(BasicBlock):
    """Same two convs as PlainBlock, plus identity addition."""

    def __init__(self, c: int, batch_norm: bool = True):
        super().__init__(c, c, batch_norm=batch_norm)
        self.out_chans = c


class DenseBlock(nn.Module):
    """Two convs producing ``growth`` new channels, concatenated to the input (DenseNet-style skip)."""

    def __init__(self, c: int, growth: int, batch_norm: bool = True):
        super().__init__()
        self.body = nn.Sequential(conv_bn_relu(c, growth, batch_norm=batch_norm),
                                  conv_bn_relu(growth, growth, batch_norm=batch_norm))
        self.out_chans = c + growth

    def forward(self, x):
        return torch.cat([x, self.body(x)], dim=1)


class DeepNetBody(nn.Module):
    """Stem (2x conv3x3-BN-ReLU, max-pool /2), ``depth`` blocks of one kind at constant resolution,
    global average pool."""

    def __init__(self, block: str, in_chans: int, width: int = 32, depth: int = 4, growth: int = 16,
                 batch_norm: bool = True):
        super().__init__()
        self.stem = nn.Sequential(conv_bn_relu(in_chans, width, batch_norm=batch_norm),
                                  conv_bn_relu(width, width, batch_norm=batch_norm), nn.MaxPool2d(2))
        blocks, c = [], width
        for _ in range(depth):
            if block == "conv":
                b = PlainBlock(c, batch_norm)
            elif block == "res":
                b = ResidualBlock(c, batch_norm)
            else:
                b = DenseBlock(c, growth, batch_norm)
            blocks.append(b)
            c = b.out_chans
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.num_features = c

    def forward(self, x):
        return self.pool(self.blocks(self.stem(x)))


def _deepnet(block, *, num_classes, in_chans, drop_rate, width=32, depth=4, growth=16, batch_norm=True):
    body = DeepNetBody(block, in_chans, width=width, depth=depth, growth=growth, batch_norm=batch_norm)
    return _wrap(body, body.num_features, num_classes, in_chans, drop_rate)


@register_model("deepnet-conv", source="custom", min_size=8, default_size=32, cam_layer="backbone.blocks",
                cam_pooled=True)
def deepnet_conv(*, num_classes, in_chans=3, pretrained=False, drop_rate=None, width: int = 32,
                 depth: int = 4, batch_norm: bool = True):
    """Stem + ``depth`` plain conv blocks (no shortcuts)."""
    return _deepnet("conv", num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate, width=width,
                    depth=depth, batch_norm=batch_norm)


@register_model("deepnet-res", source="custom", min_size=8, default_size=32, cam_layer="backbone.blocks",
                cam_pooled=True)
def deepnet_res(*, num_classes, in_chans=3, pretrained=False, drop_rate=None, width: int = 32,
                depth: int = 4, batch_norm: bool = True):
    """Stem + ``depth`` residual blocks (identity addition)."""
    return _deepnet("res", num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate, width=width,
                    depth=depth, batch_norm=batch_norm)


@register_model("deepnet-skip", source="custom", min_size=8, default_size=32, cam_layer="backbone.blocks",
                cam_pooled=True)
def deepnet_skip(*, num_classes, in_chans=3, pretrained=False, drop_rate=None, width: int = 32,
                 depth: int = 4, growth: int = 16, batch_norm: bool = True):
    """Stem + ``depth`` dense skip blocks (channel concatenation, +growth channels each)."""
    return _deepnet("skip", num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate, width=width,
                    depth=depth, growth=growth, batch_norm=batch_norm)
