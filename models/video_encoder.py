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

import torch
import torch.nn.functional as F
from torch import nn

from common.errors import UserError
from .pretrained import pretrained_state

INPUT_SIZE = (144, 112)  # (H, W): the face crop's 13:10 aspect at torchvision's 112-px training width
KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)


class VideoEncoder(nn.Module):
    """Frozen R(2+1)D-18 trunk: clips (B, T, 3, H, W) in [0, 1] -> features (B, 512, T', h, w)."""

    def __init__(self, weights="pretrained"):
        super().__init__()
        from torchvision.models import video  # imported where used: 2-3 s
        network = video.r2plus1d_18()
        if weights != "random":
            state = pretrained_state(weights, video.R2Plus1D_18_Weights.KINETICS400_V1, "--trepa_weights",
                                     "torchvision r2plus1d_18 (Kinetics-400)")
            try:
                network.load_state_dict(state)
            except RuntimeError as error:
                raise UserError(f"--trepa_weights {weights}: not a torchvision r2plus1d_18 state dict "
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
        # fp32: antialiased resizing has no bf16 kernel on CPU
        resized = F.interpolate(clips.flatten(0, 1).float(), size=INPUT_SIZE, mode="bilinear", align_corners=False,
                                antialias=True)                                    # (B*T, 3, 144, 112)
        resized = resized.view(batch, frames, 3, *INPUT_SIZE).transpose(1, 2)      # (B, 3, T, 144, 112)
        return self.trunk((resized - self.mean) / self.std)                       # (B, 512, T', 9, 7)
