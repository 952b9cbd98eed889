"""--ema: a moving average of the generator's weights is what validation scores and checkpoints hand on, while a
resume continues the trained weights and the average exactly."""
import os

import torch

from conftest import tiny_json  # noqa: F401  (a fixture)
from dubbing.pipeline import load_generator
from models.checkpoint import load_checkpoint
from test_frame_training import run_frame
from test_training_faults import last_losses_per_step

EMA = ["--ema", "0.9"]


def weights(path, key):
    return load_checkpoint(str(path))["state_dict"][key]


def same(a, b):
    return all(torch.equal(a[name], b[name]) for name in a)


def test_checkpoints_hand_on_the_average_and_a_resume_continues_both_exactly(tiny_json, tmp_path):  # noqa: F811
    whole, part = tmp_path / "whole", tmp_path / "part"
    run_frame(tiny_json, whole, *EMA)  # epochs 1 and 2, 2 iterations each
    run_frame(tiny_json, part, *EMA, "--save_every_steps", "3")
    os.remove(part / "netG_model_epoch_2.pth")  # as if killed after the first iteration of epoch 2
    run_frame(tiny_json, part, *EMA, "--resume", "auto")
    assert "resumed from" in (part / "log.txt").read_text()
    assert last_losses_per_step(part) == last_losses_per_step(whole)

    final = whole / "netG_model_epoch_2.pth"
    average, trained = weights(final, "net_g"), weights(final, "net_g_training")
    assert not same(average, trained)  # 4 steps at 0.9 leave the average behind the weights
    assert same(average, weights(part / "netG_model_epoch_2.pth", "net_g"))
    assert same(trained, weights(part / "netG_model_epoch_2.pth", "net_g_training"))
    dubbing = load_generator(str(final), "cpu").network.state_dict()
    assert same(dubbing, average) and not same(dubbing, trained)


def test_without_ema_the_checkpoint_holds_the_trained_weights_alone(tiny_json, tmp_path):  # noqa: F811
    run_frame(tiny_json, tmp_path, "--non_decay", "0", "--decay", "1")
    assert set(load_checkpoint(str(tmp_path / "netG_model_epoch_1.pth"))["state_dict"]) == {"net_g", "net_dI"}
