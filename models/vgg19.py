"""VGG19 features for DINet's perceptual loss (relu1_1, relu2_1, relu3_1, relu4_1, relu5_1)."""

import torch
from torch import nn

from common.errors import UserError
from .pretrained import pretrained_state

_SLICE_ENDS = (2, 7, 12, 21, 30)  # torchvision vgg19.features indices closing each slice
_TRUNK = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M")


def vgg19_trunk():
    """torchvision's `vgg19().features`, layer for layer (the same indices, so its state dicts load), built here:
    importing torchvision costs every process 2-3 s, and only the ImageNet weights need it."""
    layers, channels = [], 3
    for width in _TRUNK:
        if width == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(channels, width, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            channels = width
    return nn.Sequential(*layers)


def _features_state(state):
    """Accept a full torchvision VGG19 state dict ('features.0.weight', ...) or a features-only one."""
    state = state.get("state_dict", state)
    features = {key[len("features."):]: value for key, value in state.items() if key.startswith("features.")}
    return features or state


def load_vgg19_features(weights="imagenet"):
    """torchvision's VGG19 convolutional trunk with `weights`: 'imagenet' (torchvision's download and cache),
    'random', or a .pth path. Only the trunk is built: the classifier's 120 M parameters are never used."""
    features = vgg19_trunk()
    if weights == "random":
        return features
    from torchvision import models
    state = pretrained_state(weights, models.VGG19_Weights.IMAGENET1K_V1, "--vgg19_weights",
                             "torchvision VGG19 (ImageNet)", keyword="imagenet")
    try:
        features.load_state_dict(_features_state(state))
    except RuntimeError as error:
        raise UserError(f"--vgg19_weights {weights}: not a torchvision VGG19 state dict "
                         f"({str(error).splitlines()[0]})") from None
    return features


class Vgg19(nn.Module):
    """Frozen VGG19 slices; input RGB in [0, 1], normalised with ImageNet statistics inside."""

    def __init__(self, weights="imagenet"):
        super().__init__()
        features = load_vgg19_features(weights)
        starts = (0,) + _SLICE_ENDS[:-1]
        self.slices = nn.ModuleList(nn.Sequential(*features[a:b]) for a, b in zip(starts, _SLICE_ENDS))
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.eval()

    def train(self, mode=True):
        return super().train(False)  # frozen feature extractor: never in training mode

    def forward(self, x):
        x = (x - self.mean) / self.std
        outputs = []
        for block in self.slices:
            x = block(x)
            outputs.append(x)
        return outputs
