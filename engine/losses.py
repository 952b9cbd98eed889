"""Losses of the training stages: DINet's LSGAN and two-scale VGG19 perceptual L1, LatentSync's LPIPS and TREPA, and
an L1 on the mouth hole weighted towards what the references cannot show."""
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
        # The real images' features need no graph: a pass of their own under no_grad, so the backward goes
        # through the fakes alone (one pass over both would also backward the reals: 7% of a frame step's FLOPs).
        with torch.no_grad():
            targets = self.vgg(real)
        return [F.l1_loss(feature, target) for feature, target in zip(self.vgg(fake), targets)]

    def forward(self, fake, real):
        # DINet halves the fake with average pooling and the real with bilinear resizing; kept as is.
        fake_half = F.avg_pool2d(fake, 3, 2, 1, count_include_pad=False)
        real_half = F.interpolate(real, scale_factor=0.5, mode="bilinear")
        distances = self._feature_distance(fake, real) + self._feature_distance(fake_half, real_half)
        return sum(distances) / len(distances)


def mouth_l1(fake, real, reference, geometry):
    """Mean L1 of fake against real (B, 3, H, W) over the mouth hole, each pixel weighted by how far the real frame
    there differs from the mean of its references (B, 15, H, W): what the references cannot show and only the speech
    explains, mostly how far the mouth is open. A plain L1 spreads its gradient over the whole crop, so the mouth's
    few pixels of opening are learned last (the weights average 1 over each hole)."""
    rows, cols = geometry.mouth_rows, geometry.mouth_cols
    real_hole = real[..., rows, cols].float()
    references = reference[..., rows, cols].float().unflatten(1, (-1, 3)).mean(dim=1)
    weight = (real_hole - references).abs().mean(dim=1, keepdim=True)
    weight = weight / weight.mean(dim=(2, 3), keepdim=True).clamp_min(1e-6)
    return (weight * (fake[..., rows, cols].float() - real_hole).abs()).mean()


class LowerFaceLPIPS(nn.Module):
    """LatentSync's LPIPS term: mean LPIPS over the lower half of each face crop, where the mouth is."""

    def __init__(self, lpips_metric):
        super().__init__()
        self.metric = lpips_metric

    def forward(self, fake, real):
        """fake, real: (N, 3, H, W) in [0, 1]."""
        lower = fake.shape[-2] // 2
        return self.metric(fake[..., lower:, :], real[..., lower:, :].detach()).mean()


class TREPALoss(nn.Module):
    """LatentSync's temporal representation alignment: squared distance between the L2-normalised
    features of the generated and the real clip under a frozen video encoder (0 when equal, at most 4)."""

    def __init__(self, video_encoder):
        super().__init__()
        self.encoder = video_encoder

    def forward(self, fake_clip, real_clip):
        """fake_clip, real_clip: (B, T, 3, H, W) in [0, 1]."""
        with torch.no_grad():
            real = F.normalize(self.encoder(real_clip).flatten(1), dim=1)  # (B, F)
        fake = F.normalize(self.encoder(fake_clip).flatten(1), dim=1)      # (B, F)
        return (fake - real).pow(2).sum(dim=1).mean()
