"""The SyncNet that LSE-D and LSE-C were defined with (Chung & Zisserman, "Out of time", 2016), in the layout of
syncnet_python's `syncnet_v2.model`: a plain PyTorch state dict of this module tree, so papers' LSE figures and
ours come from the same network when its weights are given.

    lips  (B, 3, 5, 224, 224): 5 consecutive face crops, BGR, values 0-255 (as syncnet_python reads them)
    audio (B, 1, 13, 20):      13 MFCCs at 100 per second over the same 0.2 s
    -> a 1024-d code each; the Euclidean distance of the codes is small in sync

The weights are not shipped (they are syncnet_python's to distribute): pass the file by path.
"""
from torch import nn

from .weights_file import load_state_dict_into, read_state_dict

LIP_FRAMES = 5            # video frames per window, at 25 fps
MFCC_PER_FRAME = 4        # 100 MFCC steps per second / 25 frames per second
AUDIO_STEPS = LIP_FRAMES * MFCC_PER_FRAME
FACE_SIDE = 224
MFCC_COEFFICIENTS = 13


def _conv_bn_relu(conv, norm):
    return [conv, norm, nn.ReLU(inplace=True)]


class LseSyncNet(nn.Module):
    def __init__(self, embedding_dim=1024):
        super().__init__()
        c2, b2, c3, b3 = nn.Conv2d, nn.BatchNorm2d, nn.Conv3d, nn.BatchNorm3d
        self.netcnnaud = nn.Sequential(                                                 # (B, 1, 13, 20)
            *_conv_bn_relu(c2(1, 64, 3, padding=1), b2(64)), nn.MaxPool2d(1, 1),
            *_conv_bn_relu(c2(64, 192, 3, padding=1), b2(192)), nn.MaxPool2d(3, (1, 2)),
            *_conv_bn_relu(c2(192, 384, 3, padding=1), b2(384)),
            *_conv_bn_relu(c2(384, 256, 3, padding=1), b2(256)),
            *_conv_bn_relu(c2(256, 256, 3, padding=1), b2(256)), nn.MaxPool2d(3, 2),
            *_conv_bn_relu(c2(256, 512, (5, 4)), b2(512)),                              # (B, 512, 1, 1)
        )
        self.netfcaud = nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(),
                                      nn.Linear(512, embedding_dim))
        self.netfclip = nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(),
                                      nn.Linear(512, embedding_dim))
        self.netcnnlip = nn.Sequential(                                                 # (B, 3, 5, 224, 224)
            *_conv_bn_relu(c3(3, 96, (5, 7, 7), stride=(1, 2, 2)), b3(96)), nn.MaxPool3d((1, 3, 3), (1, 2, 2)),
            *_conv_bn_relu(c3(96, 256, (1, 5, 5), stride=(1, 2, 2), padding=(0, 1, 1)), b3(256)),
            nn.MaxPool3d((1, 3, 3), (1, 2, 2), padding=(0, 1, 1)),
            *_conv_bn_relu(c3(256, 256, (1, 3, 3), padding=(0, 1, 1)), b3(256)),
            *_conv_bn_relu(c3(256, 256, (1, 3, 3), padding=(0, 1, 1)), b3(256)),
            *_conv_bn_relu(c3(256, 256, (1, 3, 3), padding=(0, 1, 1)), b3(256)), nn.MaxPool3d((1, 3, 3), (1, 2, 2)),
            *_conv_bn_relu(c3(256, 512, (1, 6, 6)), b3(512)),                          # (B, 512, 1, 1, 1)
        )

    def forward_aud(self, audio):
        return self.netfcaud(self.netcnnaud(audio).flatten(1))

    def forward_lip(self, lips):
        return self.netfclip(self.netcnnlip(lips).flatten(1))


def load_lse_syncnet(path, flag="--lse_syncnet_path"):
    """syncnet_python's `syncnet_v2.model` (a state dict), read as weights only, frozen, in eval mode."""
    fix = "pass syncnet_python's syncnet_v2.model (a SyncNet of this repository goes to --syncnet_path)"
    return load_state_dict_into(LseSyncNet(), read_state_dict(path, flag, fix), path, flag, fix)
