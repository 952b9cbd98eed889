"""ArcFace's face-recognition backbone, for the identity score of evaluate.py: insightface's arcface_torch
`iresnet` (Deng et al., "ArcFace", 2019), in the layout of its `backbone.pth` (a plain PyTorch state dict), so
its published weights (ms1mv3_arcface_r50, glint360k_cosface_r100, ...) load as they are.

    faces (B, 3, 112, 112): RGB, aligned to ArcFace's 5-point template, scaled to [-1, 1]
    -> (B, 512) embeddings; faces of one person have a large cosine

The depth (iresnet18/34/50/100/200) is read from the weights. They are not shipped: pass the file by path.
"""
import re

from torch import nn

from common.errors import UserError

from .weights_file import load_state_dict_into, read_state_dict

FACE_SIDE = 112


def _conv3x3(inputs, outputs, stride=1):
    return nn.Conv2d(inputs, outputs, 3, stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    def __init__(self, inputs, planes, stride=1, downsample=None):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inputs, eps=1e-5)
        self.conv1 = _conv3x3(inputs, planes)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-5)
        self.prelu = nn.PReLU(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-5)
        self.downsample = downsample

    def forward(self, x):
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + (x if self.downsample is None else self.downsample(x))


class IResNet(nn.Module):
    def __init__(self, layers=(3, 4, 14, 3), num_features=512):
        super().__init__()
        self.conv1 = _conv3x3(3, 64)
        self.bn1 = nn.BatchNorm2d(64, eps=1e-5)
        self.prelu = nn.PReLU(64)
        inputs = 64
        for index, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers)):
            downsample = nn.Sequential(nn.Conv2d(inputs, planes, 1, 2, bias=False), nn.BatchNorm2d(planes, eps=1e-5))
            stage = [IBasicBlock(inputs, planes, 2, downsample)]
            stage += [IBasicBlock(planes, planes) for _ in range(blocks - 1)]
            setattr(self, f"layer{index + 1}", nn.Sequential(*stage))
            inputs = planes
        self.bn2 = nn.BatchNorm2d(512, eps=1e-5)
        self.dropout = nn.Dropout(0.0)
        self.fc = nn.Linear(512 * 7 * 7, num_features)  # 112 / 2**4 = 7
        self.features = nn.BatchNorm1d(num_features, eps=1e-5)

    def forward(self, faces):
        x = self.prelu(self.bn1(self.conv1(faces)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.features(self.fc(self.dropout(self.bn2(x).flatten(1))))


def layers_of(state):
    """The blocks per stage that a state dict's keys hold, e.g. (3, 4, 14, 3) for iresnet50."""
    blocks = {}
    for key in state:
        match = re.match(r"layer(\d)\.(\d+)\.", key)
        if match:
            stage, block = int(match.group(1)), int(match.group(2))
            blocks[stage] = max(blocks.get(stage, 0), block + 1)
    return tuple(blocks.get(stage, 0) for stage in (1, 2, 3, 4))


def load_face_recognition(path, flag="--identity_weights"):
    """arcface_torch's iresnet from its `backbone.pth` (a state dict), read as weights only, frozen, in eval mode."""
    fix = "pass arcface_torch's backbone.pth (an iresnet50 or iresnet100 state dict), or leave the flag out"
    state = read_state_dict(path, flag, fix)
    layers = layers_of(state)
    if "fc.weight" not in state or not all(layers):
        raise UserError(f"{flag} {path}: not an arcface_torch iresnet (no layer1-4 and fc weights); {fix}")
    return load_state_dict_into(IResNet(layers, state["fc.weight"].shape[0]), state, path, flag, fix)
