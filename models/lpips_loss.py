"""LPIPS with a VGG16 trunk (Zhang et al. 2018, the `lpips` package), frozen, for LatentSync's loss recipe.

The package's learned linear layers ship inside its wheel; only the VGG16 trunk's ImageNet weights are
fetched, through torchvision's weights enum (download and cache), or read from a path, so a run works
offline with `random` or a local file.
"""
import warnings

import torch
from torch import nn

from common.errors import UserError

from .pretrained import pretrained_state

# lpips' vgg16 keeps torchvision's layer indices inside five slices: features.{i} -> net.slice{k}.{i}
_SLICE_ENDS = (4, 9, 16, 23, 30)


def _trunk_state(vgg16_state):
    """torchvision VGG16 'features.{i}.*' keys -> lpips' 'slice{k}.{i}.*' keys."""
    vgg16_state = vgg16_state.get("state_dict", vgg16_state)
    renamed = {}
    for key, value in vgg16_state.items():
        index = key.split(".")[1] if key.startswith("features.") else ""
        if not index.isdigit() or int(index) >= _SLICE_ENDS[-1]:  # the classifier's, or no layer of the trunk
            continue
        index = int(index)
        slice_number = next(k for k, end in enumerate(_SLICE_ENDS, 1) if index < end)
        renamed[f"slice{slice_number}.{key[len('features.'):]}"] = value
    return renamed


class LPIPS(nn.Module):
    """Frozen LPIPS-VGG distance per image pair: inputs (N, 3, H, W) in [0, 1] -> (N,)."""

    def __init__(self, weights="pretrained", spatial=False, flag="--lpips_weights"):
        super().__init__()
        import lpips  # imports torchvision (2-3 s): only where LPIPS is used
        from torchvision import models
        # lpips builds its trunk with torchvision's deprecated `pretrained=`; a random trunk is drawn from a seed of
        # its own, so that scores with `random` compare across runs, and the caller's random numbers are left alone
        with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
            warnings.simplefilter("ignore")
            torch.manual_seed(0)
            # pnet_rand: lpips builds a random trunk instead of downloading; its linear layers still load
            self.metric = lpips.LPIPS(net="vgg", pnet_rand=True, verbose=False, spatial=spatial)
        if weights != "random":
            trunk = _trunk_state(pretrained_state(weights, models.VGG16_Weights.IMAGENET1K_V1, flag,
                                                  "torchvision VGG16 (ImageNet)"))
            try:
                self.metric.net.load_state_dict(trunk)
            except RuntimeError as error:
                raise UserError(f"{flag} {weights}: not a torchvision VGG16 state dict "
                                 f"({str(error).splitlines()[0]}); pass a torchvision VGG16 (ImageNet) .pth, "
                                 f"pretrained or random") from None
        self.requires_grad_(False)
        self.eval()

    def train(self, mode=True):
        return super().train(False)  # frozen metric: never in training mode (it has dropout)

    def forward(self, fake, real):
        """(N,) distances; with `spatial`, (N, H, W) maps of the distance at each pixel, whose means are about the
        (N,) distances."""
        distance = self.metric(fake, real, normalize=True)  # normalize: [0, 1] -> lpips' [-1, 1]
        return distance[:, 0] if self.metric.spatial else distance.flatten()
