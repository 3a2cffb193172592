"""MODNet, written for export: the official module tree (so the official state_dict loads strictly), inference path only.

Facts from ZHKKKe/MODNet@28165a4: a MobileNetV2 encoder shared by the model and its low-resolution branch (so every
backbone tensor appears twice in the state_dict, under `backbone.` and `lr_branch.backbone.`), IBNorm (BatchNorm on
the first half of the channels, non-affine InstanceNorm on the rest), bilinear upsampling with align_corners=False,
and a sigmoid at the end. The training-only heads (`lr_branch.conv_lr`, `hr_branch.conv_hr`) exist so the official
keys load, but the inference graph does not use them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ENC_CHANNELS = (16, 24, 32, 96, 1280)
HR_CHANNELS = 32
# MobileNetV2 inverted-residual stages: (expansion, out channels, repeats, first stride)
MOBILENET_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                    (6, 320, 1, 1))
# indices of features[] after which the encoder taps its 2x, 4x and 32x outputs
TAP_2X, TAP_4X, TAP_32X = 1, 3, 18


def _conv_bn_relu6(cin: int, cout: int, kernel: int, stride: int, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(cout),
            nn.ReLU6(inplace=True)]


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expansion: int):
        super().__init__()
        hidden = cin * expansion
        layers = [] if expansion == 1 else _conv_bn_relu6(cin, hidden, 1, 1)
        layers += _conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden)
        layers += [nn.Conv2d(hidden, cout, 1, 1, 0, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV2Features(nn.Module):
    def __init__(self):
        super().__init__()
        blocks: list[nn.Module] = [nn.Sequential(*_conv_bn_relu6(3, 32, 3, 2))]
        cin = 32
        for expansion, cout, repeats, stride in MOBILENET_STAGES:
            for i in range(repeats):
                blocks.append(InvertedResidual(cin, cout, stride if i == 0 else 1, expansion))
                cin = cout
        blocks.append(nn.Sequential(*_conv_bn_relu6(cin, ENC_CHANNELS[4], 1, 1)))
        self.features = nn.Sequential(*blocks)


class Backbone(nn.Module):
    def __init__(self):
        super().__init__()
        self.model = MobileNetV2Features()

    def forward(self, x):
        taps = {}
        for index, block in enumerate(self.model.features):
            x = block(x)
            taps[index] = x
        return taps[TAP_2X], taps[TAP_4X], taps[TAP_32X]


class IBNorm(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.split = channels // 2
        self.bnorm = nn.BatchNorm2d(self.split, affine=True)
        self.inorm = nn.InstanceNorm2d(channels - self.split, affine=False)

    def forward(self, x):
        return torch.cat((self.bnorm(x[:, :self.split]), self.inorm(x[:, self.split:])), 1)


class ConvIBNormRelu(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, norm_relu: bool = True):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=True)]
        if norm_relu:
            layers += [IBNorm(cout), nn.ReLU(inplace=True)]
        self.layers = nn.Sequential(*layers)

    def forward(self, x):
        return self.layers(x)


def _up2(x):
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


def _down(x, factor: int):
    return F.interpolate(x, scale_factor=1 / factor, mode="bilinear", align_corners=False)


class SEBlock(nn.Module):
    def __init__(self, channels: int, reduction: int):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(channels, channels // reduction, bias=False), nn.ReLU(inplace=True),
                                nn.Linear(channels // reduction, channels, bias=False), nn.Sigmoid())

    def forward(self, x):
        weights = self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))
        return x * weights[:, :, None, None]


class LRBranch(nn.Module):
    def __init__(self, backbone: Backbone):
        super().__init__()
        self.backbone = backbone
        self.se_block = SEBlock(ENC_CHANNELS[4], reduction=4)
        self.conv_lr16x = ConvIBNormRelu(ENC_CHANNELS[4], ENC_CHANNELS[3], 5)
        self.conv_lr8x = ConvIBNormRelu(ENC_CHANNELS[3], ENC_CHANNELS[2], 5)
        self.conv_lr = ConvIBNormRelu(ENC_CHANNELS[2], 1, 3, stride=2, norm_relu=False)  # training only

    def forward(self, img):
        enc2x, enc4x, enc32x = self.backbone(img)
        lr16x = self.conv_lr16x(_up2(self.se_block(enc32x)))
        lr8x = self.conv_lr8x(_up2(lr16x))
        return lr8x, enc2x, enc4x


class HRBranch(nn.Module):
    def __init__(self):
        super().__init__()
        hr = HR_CHANNELS
        self.tohr_enc2x = ConvIBNormRelu(ENC_CHANNELS[0], hr, 1)
        self.conv_enc2x = ConvIBNormRelu(hr + 3, hr, 3, stride=2)
        self.tohr_enc4x = ConvIBNormRelu(ENC_CHANNELS[1], hr, 1)
        self.conv_enc4x = ConvIBNormRelu(2 * hr, 2 * hr, 3)
        self.conv_hr4x = nn.Sequential(ConvIBNormRelu(3 * hr + 3, 2 * hr, 3), ConvIBNormRelu(2 * hr, 2 * hr, 3),
                                       ConvIBNormRelu(2 * hr, hr, 3))
        self.conv_hr2x = nn.Sequential(ConvIBNormRelu(2 * hr, 2 * hr, 3), ConvIBNormRelu(2 * hr, hr, 3),
                                       ConvIBNormRelu(hr, hr, 3), ConvIBNormRelu(hr, hr, 3))
        self.conv_hr = nn.Sequential(ConvIBNormRelu(hr + 3, hr, 3), ConvIBNormRelu(hr, 1, 1, norm_relu=False))

    def forward(self, img, enc2x, enc4x, lr8x):
        enc2x = self.tohr_enc2x(enc2x)
        hr4x = self.conv_enc2x(torch.cat((_down(img, 2), enc2x), 1))
        hr4x = self.conv_enc4x(torch.cat((hr4x, self.tohr_enc4x(enc4x)), 1))
        hr4x = self.conv_hr4x(torch.cat((hr4x, _up2(lr8x), _down(img, 4)), 1))
        return self.conv_hr2x(torch.cat((_up2(hr4x), enc2x), 1))


class FusionBranch(nn.Module):
    def __init__(self):
        super().__init__()
        hr = HR_CHANNELS
        self.conv_lr4x = ConvIBNormRelu(ENC_CHANNELS[2], hr, 5)
        self.conv_f2x = ConvIBNormRelu(2 * hr, hr, 3)
        self.conv_f = nn.Sequential(ConvIBNormRelu(hr + 3, hr // 2, 3), ConvIBNormRelu(hr // 2, 1, 1, norm_relu=False))

    def forward(self, img, lr8x, hr2x):
        lr2x = _up2(self.conv_lr4x(_up2(lr8x)))
        f2x = self.conv_f2x(torch.cat((lr2x, hr2x), 1))
        return torch.sigmoid(self.conv_f(torch.cat((_up2(f2x), img), 1)))


class MODNet(nn.Module):
    """Image (N, 3, H, W) normalised to [-1, 1] -> alpha matte (N, 1, H, W) in [0, 1]."""

    def __init__(self):
        super().__init__()
        # registered before lr_branch, as in the official model, so state_dict key order matches
        self.backbone = Backbone()
        self.lr_branch = LRBranch(self.backbone)
        self.hr_branch = HRBranch()
        self.f_branch = FusionBranch()

    def forward(self, img):
        lr8x, enc2x, enc4x = self.lr_branch(img)
        hr2x = self.hr_branch(img, enc2x, enc4x, lr8x)
        return self.f_branch(img, lr8x, hr2x)
