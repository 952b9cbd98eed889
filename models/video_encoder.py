"""The frozen video encoder behind TREPA (LatentSync's temporal representation alignment).

LatentSync aligns VideoMAE-v2 features of generated and real clips; VideoMAE is not in torchvision,
so we use torchvision's R(2+1)D-18 trained on Kinetics-400. Why this one: it takes a clip of any
length >= 1 and any size (adaptive pooling; S3D's fixed pooling needs 16+ frames at 224 px, our clips
have 5), it is the most accurate of torchvision's three video ResNets (Kinetics-400 top-1 67.5% vs
63.2% R3D-18, 64.0% MC3-18) at the same cost, and it is small next to the generator: 31.3 M frozen
parameters; one 5-frame clip at 144 x 112 costs about 2.5 s forward + backward on 2 CPU cores, against
over a minute for the generator at mouth 256 on the same clip.

Features are the last residual stage's map, (B, 512, ceil(T/8), H/16, W/16), before pooling: TREPA
compares where in the clip things happen, which the pooled 512-d vector averages away.
"""
import os

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import video

INPUT_SIZE = (144, 112)  # (H, W): the face crop's 13:10 aspect at torchvision's 112-px training width
KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)


def _state(weights):
    if weights == "pretrained":
        try:
            return video.R2Plus1D_18_Weights.KINETICS400_V1.get_state_dict(progress=True)
        except Exception as error:  # no network, proxy, corrupt cache: all end the same way for the user
            raise SystemExit(f"could not fetch R(2+1)D-18 Kinetics-400 weights for TREPA ({type(error).__name__}); put "
                             f"r2plus1d_18-91a641e6.pth in {torch.hub.get_dir()}/checkpoints, or pass --trepa_weights "
                             f"PATH, or --trepa_weights random") from None
    if not os.path.isfile(weights):
        raise SystemExit(f"--trepa_weights {weights}: no such file; pass pretrained, random or an r2plus1d_18 .pth path")
    try:
        return torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as error:
        raise SystemExit(f"--trepa_weights {weights}: cannot read it ({type(error).__name__}); "
                         f"pass a torchvision r2plus1d_18 .pth, pretrained or random") from None


class VideoEncoder(nn.Module):
    """Frozen R(2+1)D-18 trunk: clips (B, T, 3, H, W) in [0, 1] -> features (B, 512, T', h, w)."""

    def __init__(self, weights="pretrained"):
        super().__init__()
        network = video.r2plus1d_18()
        if weights != "random":
            state = _state(weights)
            try:
                network.load_state_dict(state.get("state_dict", state))
            except RuntimeError as error:
                raise SystemExit(f"--trepa_weights {weights}: not a torchvision r2plus1d_18 state dict "
                                 f"({str(error).splitlines()[0]})") from None
        # the classifier (avgpool, fc) is never used
        self.trunk = nn.Sequential(network.stem, network.layer1, network.layer2, network.layer3, network.layer4)
        self.register_buffer("mean", torch.tensor(KINETICS_MEAN).view(1, 3, 1, 1, 1))
        self.register_buffer("std", torch.tensor(KINETICS_STD).view(1, 3, 1, 1, 1))
        self.requires_grad_(False)
        self.eval()

    def train(self, mode=True):
        return super().train(False)  # frozen: its BatchNorm statistics stay Kinetics'

    def forward(self, clips):
        batch, frames = clips.shape[:2]
        resized = F.interpolate(clips.flatten(0, 1), size=INPUT_SIZE, mode="bilinear", align_corners=False,
                                antialias=True)                                    # (B*T, 3, 144, 112)
        resized = resized.view(batch, frames, 3, *INPUT_SIZE).transpose(1, 2)      # (B, 3, T, 144, 112)
        return self.trunk((resized - self.mean) / self.std)                       # (B, 512, T', 9, 7)
