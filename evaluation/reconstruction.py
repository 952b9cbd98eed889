"""Frame-pair metrics of a self-reconstruction (a video dubbed with its own audio) against its source:
PSNR and SSIM on RGB in [0, 1], LPIPS (VGG), and FID over frames with torchvision's Inception v3."""
import os

import numpy as np
import torch
import torch.nn.functional as F

from common.errors import UserError
from models.checkpoint import check_not_inflating


def psnr(fake, real):
    """fake, real (N, 3, H, W) in [0, 1] -> (N,) dB."""
    mse = (fake - real).pow(2).mean(dim=(1, 2, 3)).clamp(min=1e-10)
    return 10 * torch.log10(1 / mse)


def _gaussian_window(size=11, sigma=1.5):
    coords = torch.arange(size, dtype=torch.float32) - size // 2
    kernel = torch.exp(-coords ** 2 / (2 * sigma ** 2))
    kernel = kernel / kernel.sum()
    return (kernel[:, None] * kernel[None, :]).expand(3, 1, size, size).contiguous()


def ssim(fake, real):
    """Wang et al.'s SSIM (11x11 Gaussian window, sigma 1.5, per channel, then averaged) -> (N,)."""
    window = _gaussian_window().to(fake)
    c1, c2 = 0.01 ** 2, 0.03 ** 2

    def blur(x):
        return F.conv2d(x, window, groups=3)
    mu_f, mu_r = blur(fake), blur(real)
    var_f = blur(fake * fake) - mu_f ** 2
    var_r = blur(real * real) - mu_r ** 2
    covariance = blur(fake * real) - mu_f * mu_r
    ssim_map = ((2 * mu_f * mu_r + c1) * (2 * covariance + c2)) / ((mu_f ** 2 + mu_r ** 2 + c1) * (var_f + var_r + c2))
    return ssim_map.mean(dim=(1, 2, 3))


class InceptionFeatures(torch.nn.Module):
    """torchvision's Inception v3 pool features (2048-d) from a state dict the user supplies (FID needs
    the ImageNet-trained weights; they cannot be fetched here)."""

    def __init__(self, weights_path):
        super().__init__()
        from torchvision.models import inception_v3
        network = inception_v3(weights=None, aux_logits=True, init_weights=False)
        if not os.path.isfile(weights_path):
            raise UserError(f"--inception_weights {weights_path}: no such file; pass torchvision's Inception v3 "
                             f"state dict (.pth), or leave the flag out to skip FID")
        check_not_inflating(weights_path, "--inception_weights", "pass inception_v3_google-0cc3c7bd.pth")
        try:
            state = torch.load(weights_path, map_location="cpu", weights_only=True)
            network.load_state_dict(state.get("state_dict", state))
        except Exception as error:
            raise UserError(f"--inception_weights {weights_path}: not a torchvision Inception v3 state dict "
                             f"({type(error).__name__}); pass inception_v3_google-0cc3c7bd.pth or a state dict "
                             f"saved from torchvision.models.inception_v3") from None
        network.fc = torch.nn.Identity()
        self.network = network.eval().requires_grad_(False)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def forward(self, images):
        images = F.interpolate(images, size=(299, 299), mode="bilinear", align_corners=False)
        return self.network((images - self.mean) / self.std)


def frechet_distance(features_a, features_b):
    """FID between two (N, D) feature sets."""
    from scipy import linalg
    mu_a, mu_b = features_a.mean(0), features_b.mean(0)
    cov_a, cov_b = np.cov(features_a, rowvar=False), np.cov(features_b, rowvar=False)
    root = linalg.sqrtm(cov_a @ cov_b)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root.real))
