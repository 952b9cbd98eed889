"""LPIPS with a VGG16 trunk (Zhang et al. 2018, the `lpips` package), frozen, for LatentSync's loss recipe.

The package's learned linear layers ship inside its wheel; only the VGG16 trunk's ImageNet weights are
fetched, through torchvision's weights enum (download and cache), or read from a path, so a run works
offline with `random` or a local file.
"""
import os
import warnings

import lpips
import torch
from torch import nn
from torchvision import models

# lpips' vgg16 keeps torchvision's layer indices inside five slices: features.{i} -> net.slice{k}.{i}
_SLICE_ENDS = (4, 9, 16, 23, 30)


def _trunk_state(vgg16_state):
    """torchvision VGG16 'features.{i}.*' keys -> lpips' 'slice{k}.{i}.*' keys."""
    vgg16_state = vgg16_state.get("state_dict", vgg16_state)
    renamed = {}
    for key, value in vgg16_state.items():
        if not key.startswith("features."):
            continue
        index = int(key.split(".")[1])
        slice_number = next(k for k, end in enumerate(_SLICE_ENDS, 1) if index < end)
        renamed[f"slice{slice_number}.{key[len('features.'):]}"] = value
    return renamed


def _vgg16_state(weights):
    if weights == "pretrained":
        try:
            return models.VGG16_Weights.IMAGENET1K_V1.get_state_dict(progress=True)
        except Exception as error:  # no network, proxy, corrupt cache: all end the same way for the user
            raise SystemExit(f"could not fetch VGG16 ImageNet weights for LPIPS ({type(error).__name__}); put "
                             f"vgg16-397923af.pth in {torch.hub.get_dir()}/checkpoints, or pass --lpips_weights PATH "
                             f"to a VGG16 state dict, or --lpips_weights random") from None
    if not os.path.isfile(weights):
        raise SystemExit(f"--lpips_weights {weights}: no such file; pass pretrained, random or a VGG16 .pth path")
    try:
        return torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as error:
        raise SystemExit(f"--lpips_weights {weights}: cannot read it ({type(error).__name__}); "
                         f"pass a torchvision VGG16 .pth, pretrained or random") from None


class LPIPS(nn.Module):
    """Frozen LPIPS-VGG distance per image pair: inputs (N, 3, H, W) in [0, 1] -> (N,)."""

    def __init__(self, weights="pretrained"):
        super().__init__()
        with warnings.catch_warnings():  # lpips builds its trunk with torchvision's deprecated `pretrained=`
            warnings.simplefilter("ignore")
            # pnet_rand: lpips builds a random trunk instead of downloading; its linear layers still load
            self.metric = lpips.LPIPS(net="vgg", pnet_rand=True, verbose=False)
        if weights != "random":
            trunk = _trunk_state(_vgg16_state(weights))
            try:
                self.metric.net.load_state_dict(trunk)
            except RuntimeError as error:
                raise SystemExit(f"--lpips_weights {weights}: not a torchvision VGG16 state dict "
                                 f"({str(error).splitlines()[0]})") from None
        self.requires_grad_(False)
        self.eval()

    def train(self, mode=True):
        return super().train(False)  # frozen metric: never in training mode (it has dropout)

    def forward(self, fake, real):
        return self.metric(fake, real, normalize=True).flatten()  # normalize: [0, 1] -> lpips' [-1, 1]
