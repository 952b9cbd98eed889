"""DINet's losses: LSGAN and the two-scale VGG19 perceptual L1."""
import torch
import torch.nn.functional as F
from torch import nn


class GANLoss(nn.Module):
    """Least-squares GAN loss: mean squared distance of the score map to 1 (real) or 0 (fake)."""

    def forward(self, scores, target_is_real):
        target = torch.ones_like(scores) if target_is_real else torch.zeros_like(scores)
        return F.mse_loss(scores, target)


class PerceptualLoss(nn.Module):
    """Mean L1 between VGG19 features of fake and real, at full and half resolution (DINet's recipe)."""

    def __init__(self, vgg):
        super().__init__()
        self.vgg = vgg

    def _feature_distance(self, fake, real):
        # One VGG pass over fake and real together; VGG has no batch statistics, so this equals two passes.
        features = self.vgg(torch.cat([fake, real.detach()]))
        return [F.l1_loss(*feature.chunk(2)) for feature in features]

    def forward(self, fake, real):
        # DINet halves the fake with average pooling and the real with bilinear resizing; kept as is.
        fake_half = F.avg_pool2d(fake, 3, 2, 1, count_include_pad=False)
        real_half = F.interpolate(real, scale_factor=0.5, mode="bilinear")
        distances = self._feature_distance(fake, real) + self._feature_distance(fake_half, real_half)
        return sum(distances) / len(distances)
