"""DINet's published training iteration (train_DINet_frame.py / train_DINet_clip.py), step for step, on this
repository's stages: bench.py's training baseline."""
import torch


def published_iteration(stage, data, task):
    """One iteration as DINet's train_DINet_frame.py / train_DINet_clip.py compute it, on this repository's
    modules: each discriminator's loss is backpropagated through the generator too (its fakes are not detached,
    retain_graph=True, and the generator's gradients are zeroed afterwards), the generator's loss computes the
    discriminators' weight gradients, and VGG19 and the SyncNet score the fakes as in stage.step."""
    clip = task == "train_clip"
    frames = (lambda tensor: tensor.flatten(0, 1)) if clip else (lambda tensor: tensor)  # (B, 5, ...) -> (B*5, ...)
    fake = stage.net_g(frames(data["source_masked"]), frames(data["reference"]), frames(data["audio"]))
    real = frames(data["source"])
    inputs = {"net_dI": (fake, real)}
    if clip:  # the 5 frames of a clip stacked on channels
        inputs["net_dV"] = (fake.view(data["source"].shape).flatten(1, 2), data["source"].flatten(1, 2))
    for name, (fakes, reals) in inputs.items():
        stage.optimizers[name].zero_grad()
        loss = (stage.gan(getattr(stage, name)(fakes)[1], False) + stage.gan(getattr(stage, name)(reals)[1], True)) * 0.5
        loss.backward(retain_graph=True)
        stage.optimizers[name].step()
    stage.optimizers["net_g"].zero_grad()
    loss = sum(stage.gan(getattr(stage, name)(fakes)[1], True) for name, (fakes, _) in inputs.items())
    loss = loss + stage.perception(fake, real) * stage.opt.lamb_perception
    if clip:
        mouths = inputs["net_dV"][0][..., stage.geometry.mouth_rows, stage.geometry.mouth_cols]
        in_sync = torch.ones(mouths.shape[0], device=mouths.device)
        loss = loss + stage.syncnet.loss(mouths, data["audio_clip"], in_sync) * stage.opt.lamb_syncnet_perception
    loss.backward()
    stage.optimizers["net_g"].step()
