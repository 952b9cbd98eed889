"""DINet's clip stage, with DINet's or LatentSync's loss recipe.

Each sample is 5 consecutive frames (data/clip_dataset.py) that the generator paints one by one. On top of
the frame stage's generator, frame discriminator and perception loss, the clip stage adds:
- net_dV, DINet's discriminator on the 5 frames stacked on channels, (B, 15, H, W);
- the sync loss: a frozen SyncNet scores the 5 generated mouths against the clip's 9 audio vectors;
- LatentSync's terms: L1 reconstruction, LPIPS on the lower half of the face, TREPA on the clip.
Every weight is a flag (`--loss_preset` fills those not given); a weight of 0 builds no network for its
loss and leaves its term out of the log line. Terms are logged weighted, as DINet logs perception and sync,
in DINet's order: Loss_DI Loss_GI Loss_DV Loss_GV Loss_perception Loss_sync, then Loss_l1 Loss_mouth Loss_lpips
Loss_trepa.

The generator is rebuilt from the frame stage's checkpoint (its generator_config, or its weights for a
DINet-made file), so `--lab` need not be repeated; given, it must match.
"""
import torch
import torch.nn.functional as F

from common.errors import UserError
from data.clip_dataset import CLIP_FRAMES, ClipDataset
from data.training_json import check_audio_channel
from models import Discriminator
from models.checkpoint import check_syncnet_fits, load_checkpoint, load_network, load_syncnet
from models.lpips_loss import LPIPS
from models.video_encoder import VideoEncoder

from . import distributed
from .losses import LowerFaceLPIPS, TREPALoss, mouth_l1
from .trainer import FrameStage, adam, check_data_compatible, choose_generator_config, lab_name

FRAMES = len(CLIP_FRAMES)


class ClipStage(FrameStage):
    checkpoint_networks = ("net_g", "net_dI", "net_dV")
    starts_trained = True  # from the frame stage's generator

    def __init__(self, opt, generator_cfg, runtime, syncnet=None):
        super().__init__(opt, generator_cfg, runtime)
        self.net_dV = self.build(Discriminator(opt.source_channel * FRAMES, opt.D_block_expansion,
                                               opt.D_num_blocks, opt.D_max_features))
        self.optimizers["net_dV"] = adam(self.net_dV.parameters(), opt.lr_dI)  # DINet: lr_dI for both
        if opt.lamb_syncnet_perception and syncnet is None:
            raise ValueError("--lamb_syncnet_perception > 0 needs a SyncNet")
        device = runtime.device
        self.syncnet = syncnet.to(device) if opt.lamb_syncnet_perception else None
        self.lpips = LowerFaceLPIPS(LPIPS(opt.lpips_weights)).to(device) if opt.lamb_lpips else None
        self.trepa = TREPALoss(VideoEncoder(opt.trepa_weights)).to(device) if opt.lamb_trepa else None

    @classmethod
    def create(cls, opt, training_set, runtime, resume):
        """Checks the SyncNet against the data first (cheap, and the likeliest mistake), then rebuilds the
        generator from the frame checkpoint (or the resumed clip checkpoint) and loads its weights."""
        audio_channel = check_audio_channel(training_set, opt.audio_channel)
        syncnet = None
        if opt.lamb_syncnet_perception:
            if not opt.pretrained_syncnet_path:
                raise UserError("--pretrained_syncnet_path is empty: the sync loss needs a SyncNet trained on this "
                                 "data (python train_syncnet.py), or pass --lamb_syncnet_perception 0")
            syncnet, syncnet_cfg = load_syncnet(opt.pretrained_syncnet_path)
            check_syncnet_fits(syncnet_cfg, opt.pretrained_syncnet_path, opt.mouth_region_size,
                               training_set.audio_feature, audio_channel)
        if resume is not None:
            start, path, flag = resume, opt.resume, "--resume"
        elif not opt.pretrained_frame_DINet_path:
            raise UserError("--pretrained_frame_DINet_path is empty: the clip stage starts from the frame stage's "
                             "netG_model_epoch_N.pth at the same --mouth_region_size")
        else:
            path, flag = opt.pretrained_frame_DINet_path, "--pretrained_frame_DINet_path"
            start = load_checkpoint(path, flag, needs="net_g", expected="the frame stage's netG_model_epoch_N.pth")
        check_data_compatible(start, opt, training_set, path, flag)
        generator_cfg = choose_generator_config(opt, training_set, audio_channel, start, path, flag)
        stage = cls(opt, generator_cfg, runtime, syncnet)
        stage.lab = lab_name(opt, start)
        if resume is None:
            load_network(distributed.unwrap(stage.net_g), start, "net_g", path, flag)
        return stage

    def train_mode(self):
        super().train_mode()
        if self.opt.batchnorm_stats == "frozen":
            for module in self.net_g.modules():
                if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                    module.eval()

    def dataset(self, training_set):
        return ClipDataset(training_set, self.opt.augment_num, self.opt.mouth_region_size, self.opt.frame_cache_mb)

    def step(self, batch):
        real_clip = batch["source"]                                          # (B, 5, 3, H, W)
        real = real_clip.flatten(0, 1)                                       # (B*5, 3, H, W)
        with self.autocast():
            fake = self.net_g(batch["source_masked"].flatten(0, 1), batch["reference"].flatten(0, 1),
                              batch["audio"].flatten(0, 1))                  # (B*5, 3, H, W)
        fake_clip = fake.view_as(real_clip)                                  # (B, 5, 3, H, W)
        # DINet's clip layout for net_dV and the SyncNet: the 5 frames stacked on channels, (B, 15, H, W)
        fake_stacked, real_stacked = fake_clip.flatten(1, 2), real_clip.flatten(1, 2)

        loss_dI = self.update_discriminator("net_dI", fake, real)
        loss_dV = self.update_discriminator("net_dV", fake_stacked, real_stacked)

        opt = self.opt
        # the frame stage's terms (FrameStage.step) in DINet's clip order, among the clip's own
        with self.autocast():
            terms = {"Loss_GI": self.adversarial("net_dI", fake), "Loss_GV": self.adversarial("net_dV", fake_stacked)}
            if self.perception is not None:
                terms["Loss_perception"] = self.perception(fake, real) * opt.lamb_perception
            if self.syncnet is not None:
                mouths = fake_stacked[..., self.geometry.mouth_rows, self.geometry.mouth_cols]  # (B, 15, m, m)
                in_sync = torch.ones(mouths.shape[0], device=mouths.device)
                terms["Loss_sync"] = self.syncnet.loss(mouths, batch["audio_clip"], in_sync) * opt.lamb_syncnet_perception
            if opt.lamb_l1:
                terms["Loss_l1"] = F.l1_loss(fake, real) * opt.lamb_l1
            if opt.lamb_mouth:
                references = batch["reference"].flatten(0, 1)
                terms["Loss_mouth"] = mouth_l1(fake, real, references, self.geometry) * opt.lamb_mouth
            if self.lpips is not None:
                terms["Loss_lpips"] = self.lpips(fake, real) * opt.lamb_lpips
            if self.trepa is not None:
                terms["Loss_trepa"] = self.trepa(fake_clip, real_clip) * opt.lamb_trepa
        self.update_generator(terms)

        losses = {"Loss_DI": loss_dI, "Loss_GI": terms.pop("Loss_GI"), "Loss_DV": loss_dV, **terms}
        # the first sample's 5 frames, one row each: masked source | 5 references | generated | real
        masked, reference = batch["source_masked"][0], batch["reference"][0]
        rows = [[masked[t], *reference[t].split(3), fake_clip[0, t], real_clip[0, t]] for t in range(FRAMES)]
        return {name: value.detach() for name, value in losses.items()}, rows
