"""Frame-stage training: the log line, checkpoints, coarse-to-fine, resume, and the data it reads."""
import glob
import json
import os
import re
import subprocess
import sys

import pytest
import torch
from torch.optim import Adam

from common.errors import UserError
from conftest import ROOT, write_dinet_json
from config.config import training_parser
from data.training_json import load_training_json
from engine.run_log import format_log_line
from engine import trainer
from engine.trainer import FrameStage, train
from models.checkpoint import atomic_save, load_checkpoint

LOG_LINE = re.compile(r"^===> Epoch\[(\d+)\]\((\d+)/(\d+)\):  Loss_DI: (\d+\.\d{4}) Loss_GI: (\d+\.\d{4}) "
                      r"Loss_perception: (\d+\.\d{4}) lr_g = (\d\.\d{7}) $")
FAST = ["--vgg19_weights", "random", "--device", "cpu", "--num_workers", "0", "--augment_num", "2",
        "--batch_size", "2", "--non_decay", "1", "--decay", "1", "--checkpoint", "1"]


def run_frame(json_path, result_path, *args):
    opt = training_parser("test", result_path).parse_args(["--train_data", json_path, "--result_path", str(result_path),
                                                           *FAST, *args])
    train(opt, FrameStage)
    return opt


def metrics(result_path):
    with open(os.path.join(result_path, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def assert_resumed_as_epoch_2(whole, part, rel=1e-5, abs=1e-6):
    """The run in `part`, resumed from `whole`'s first checkpoint, logged `whole`'s epoch 2: its steps, and its
    losses and learning rate to `rel` / `abs`."""
    full = [m for m in metrics(whole) if m["epoch"] == 2]
    resumed = metrics(part)
    assert [m["step"] for m in resumed] == [m["step"] for m in full] == [2, 3]
    for a, b in zip(full, resumed):
        for key in ("Loss_DI", "Loss_GI", "Loss_perception", "lr_g"):
            assert a[key] == pytest.approx(b[key], rel=rel, abs=abs), key


def test_log_line_is_dinets_format():
    line = format_log_line(10, 53, 54, {"Loss_DI": 0.24094, "Loss_GI": 0.31071, "Loss_perception": 5.16621}, 1e-4)
    assert line == "===> Epoch[10](53/54):  Loss_DI: 0.2409 Loss_GI: 0.3107 Loss_perception: 5.1662 lr_g = 0.0001000 "
    assert LOG_LINE.match(line)


@pytest.fixture(scope="module")
def lab2_run(tiny_json, tmp_path_factory):
    """Two epochs of lab2 at mouth 64, a checkpoint after each, an image grid every iteration."""
    result_path = tmp_path_factory.mktemp("lab2_run")
    run_frame(tiny_json, result_path, "--lab", "lab2", "--image_every", "1")
    return result_path


def test_frame_stage_writes_dinet_checkpoints_logs_and_image_grids(lab2_run):
    tmp_path = lab2_run
    checkpoint = torch.load(tmp_path / "netG_model_epoch_2.pth", weights_only=False)
    assert checkpoint["epoch"] == 3  # DINet stores the epoch to start from
    assert set(checkpoint["state_dict"]) == {"net_g", "net_dI"}
    assert set(checkpoint["optimizer"]) == {"net_g", "net_dI"}
    assert checkpoint["generator_config"]["audio_channel"] == 29
    assert checkpoint["generator_config"]["extra_same_block"] and checkpoint["lab"] == "lab2"
    assert checkpoint["mouth_region_size"] == 64
    lines = (tmp_path / "log.txt").read_text().splitlines()
    iterations = [line for line in lines if line.startswith("===>")]
    assert len(iterations) == 4 and all(LOG_LINE.match(line + " ") for line in iterations)
    assert glob.glob(str(tmp_path / "tensorboard" / "events.out.tfevents.*"))
    assert len(glob.glob(str(tmp_path / "samples" / "*.png"))) == 4
    assert not glob.glob(str(tmp_path / ".*.partial*"))  # atomic writes leave no temporary files


def test_a_checkpoint_says_which_flags_made_it(lab2_run):
    """Months later: the loss weights, data and schedule flags and the audio window, read back as the user would."""
    result = subprocess.run([sys.executable, "inspect_checkpoint.py", str(lab2_run / "netG_model_epoch_2.pth")],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    recorded = json.loads(result.stdout)
    assert recorded["lab"] == "lab2" and recorded["audio_window"] == 5 and recorded["epoch"] == 3
    options = recorded["options"]
    assert (options["lamb_perception"], options["lamb_l1"], options["lamb_mouth"]) == (10.0, 0.0, 0.0)
    assert (options["batch_size"], options["augment_num"], options["seed"], options["lr_g"]) == (2, 2, 456, 0.0001)
    assert options["lab"] == "lab2" and options["image_every"] == 1 and options["vgg19_weights"] == "random"
    assert "state_dict" not in recorded and "optimizer" not in recorded


@pytest.mark.parametrize("mouth_size", [64, 128, 256])
def test_one_frame_stage_step_at_each_mouth_size(tiny_json, tmp_path, mouth_size):
    opt = training_parser("test", tmp_path).parse_args(["--train_data", tiny_json, "--mouth_region_size",
                                                        str(mouth_size), *FAST])
    torch.manual_seed(0)
    from engine import distributed
    from config.labs import generator_config
    stage = FrameStage(opt, generator_config("lab1", 29), distributed.setup("cpu"))
    dataset = stage.dataset(load_training_json(tiny_json))
    batch = stage.precision.inputs({key: value.unsqueeze(0) for key, value in dataset[0].items()}, "cpu")
    assert batch["source"].shape[-2:] == (mouth_size * 3 // 2 + mouth_size // 8, mouth_size + mouth_size // 4)
    before = [p.detach().clone() for p in stage.net_g.parameters()]
    losses, rows = stage.step(batch)
    assert set(losses) == {"Loss_DI", "Loss_GI", "Loss_perception"}
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    assert any(not torch.equal(a, b) for a, b in zip(before, stage.net_g.parameters()))
    assert len(rows[0]) == 8  # masked source | 5 references | generated | real


def test_generator_update_computes_no_discriminator_gradients_and_perception_is_dinets(tiny_json, tmp_path):
    """The generator's backward skips what its update throws away (the discriminator's weight gradients, VGG19's
    backward through the real images) and the loss and the generator's gradients stay what they were."""
    from engine import distributed
    from engine.losses import PerceptualLoss
    from config.labs import generator_config
    opt = training_parser("test", tmp_path).parse_args(["--train_data", tiny_json, *FAST])
    torch.manual_seed(0)
    stage = FrameStage(opt, generator_config("lab1", 29), distributed.setup("cpu"))
    fake = torch.rand(2, 3, 104, 80, requires_grad=True)
    real = torch.rand(2, 3, 104, 80)
    stage.adversarial("net_dI", fake).backward()
    assert fake.grad is not None and fake.grad.abs().sum() > 0
    assert all(p.grad is None for p in stage.net_dI.parameters())

    class OnePass(PerceptualLoss):  # DINet's formula, fakes and reals through VGG19 together
        def _feature_distance(self, fake, real):
            return [torch.nn.functional.l1_loss(*f.chunk(2)) for f in self.vgg(torch.cat([fake, real]))]
    for loss in (stage.perception, OnePass(stage.perception.vgg)):
        fake.grad = None
        value = loss(fake, real)
        value.backward()
        if isinstance(loss, OnePass):
            torch.testing.assert_close(value, expected, rtol=1e-5, atol=0)
            torch.testing.assert_close(fake.grad, expected_grad, rtol=1e-4, atol=1e-9)
        expected, expected_grad = value.detach(), fake.grad.clone()


def test_mouth_l1_counts_only_the_mouth_hole_and_most_where_the_references_cannot_show_the_real_frame():
    from common.geometry import CropGeometry
    from engine.losses import mouth_l1
    geometry = CropGeometry(64)
    real = torch.full((1, 3, 104, 80), 0.5)
    references = real.repeat(1, 5, 1, 1)
    rows, cols = geometry.mouth_rows, geometry.mouth_cols
    real[..., 70:76, 30:50] = 0.1  # an open mouth the references (closed) do not show
    assert mouth_l1(real, real, references, geometry) == 0
    outside = real.clone()
    outside[..., :rows.start, :] = 1.0  # wrong everywhere above the hole: not the mouth's business
    assert mouth_l1(outside, real, references, geometry) == 0
    in_the_opening, elsewhere_in_the_hole = real.clone(), real.clone()
    in_the_opening[..., 70:76, 30:50] += 0.2
    elsewhere_in_the_hole[..., 40:46, 30:50] += 0.2  # the same error where the references match the real frame
    assert mouth_l1(in_the_opening, real, references, geometry) > 0.1
    assert mouth_l1(elsewhere_in_the_hole, real, references, geometry) == 0  # the plain L1's job there


def test_lamb_mouth_adds_its_term_to_the_frame_stage(tiny_json, tmp_path):
    from engine import distributed
    from config.labs import generator_config
    opt = training_parser("test", tmp_path).parse_args(["--train_data", tiny_json, "--lamb_mouth", "5", *FAST])
    stage = FrameStage(opt, generator_config("lab1", 29), distributed.setup("cpu"))
    dataset = stage.dataset(load_training_json(tiny_json))
    batch = stage.precision.inputs({key: value.unsqueeze(0) for key, value in dataset[0].items()}, "cpu")
    losses, _ = stage.step(batch)
    assert set(losses) == {"Loss_DI", "Loss_GI", "Loss_perception", "Loss_mouth"} and losses["Loss_mouth"] > 0


@pytest.mark.parametrize("task", ["train_frame", "train_clip"])
def test_stage_step_makes_the_published_iterations_update(task):
    """The stages' iteration skips work (detached fakes for the discriminators, no discriminator weight gradients
    in the generator's backward, no graph through VGG19's reals) that DINet's train_DINet_frame.py and
    train_DINet_clip.py compute and throw away: from the same weights and batch, both make the same update."""
    from benchmark.published import published_iteration
    from benchmark.training import training_stage
    stages = []
    for _ in range(2):
        torch.manual_seed(0)
        stages.append(training_stage(task, 64, 2 if task == "train_frame" else 1, torch.device("cpu"), "fp32", False,
                                     "lab1"))
    (ours, data), (published, published_data) = stages
    ours.step(data)
    published_iteration(published, published_data, task)
    # the discriminators' updated weights, and the generator's gradients (Adam's first step turns the
    # ~0 gradients of a bias before a BatchNorm into +-lr, so the generator's weights would differ by noise)
    for name in ours.checkpoint_networks[1:]:
        for (key, a), b in zip(getattr(ours, name).state_dict().items(), getattr(published, name).state_dict().values()):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=f"{name}.{key}")
    grads = [(key, a.grad, b.grad) for (key, a), b in zip(ours.net_g.named_parameters(), published.net_g.parameters())]
    scale = max(float(b.abs().max()) for _, _, b in grads)
    for key, a, b in grads:
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5 * scale, msg=f"net_g.{key}.grad")


def test_coarse_checkpoint_initialises_finer_stage(tiny_json, lab2_run, tmp_path):
    # lr 0: Adam leaves the weights where coarse-to-fine put them, so the 128 checkpoint shows what was loaded
    run_frame(tiny_json, tmp_path, "--lab", "lab2", "--mouth_region_size", "128", "--lr_g", "0", "--decay", "0",
              "--augment_num", "1", "--coarse2fine", "--coarse_model_path", str(lab2_run / "netG_model_epoch_2.pth"))
    coarse = torch.load(lab2_run / "netG_model_epoch_2.pth", weights_only=False)["state_dict"]["net_g"]
    fine = torch.load(tmp_path / "netG_model_epoch_1.pth", weights_only=False)["state_dict"]["net_g"]
    assert torch.equal(coarse["out_conv.4.weight"], fine["out_conv.4.weight"])
    assert torch.equal(coarse["adaAT.scale.0.weight"], fine["adaAT.scale.0.weight"])


def test_a_run_whose_last_epoch_is_not_a_multiple_of_checkpoint_still_saves_it(tiny_json, tmp_path):
    run_frame(tiny_json, tmp_path, "--decay", "0", "--augment_num", "1", "--checkpoint", "2")
    assert sorted(path.name for path in tmp_path.glob("*.pth")) == ["netG_model_epoch_1.pth"]
    assert load_checkpoint(str(tmp_path / "netG_model_epoch_1.pth"))["epoch"] == 2  # the epoch to start from


def test_coarse_checkpoint_of_another_lab_is_rejected(tiny_json, lab2_run, tmp_path):
    with pytest.raises(UserError, match=r"netG_model_epoch_2.pth: trained as \[extra_same_block=True.*builds \[DINet"):
        run_frame(tiny_json, tmp_path, "--mouth_region_size", "128", "--coarse2fine",
                  "--coarse_model_path", str(lab2_run / "netG_model_epoch_2.pth"))


def test_resume_continues_the_loss_trajectory_of_an_uninterrupted_run(tiny_json, lab2_run, tmp_path):
    run_frame(tiny_json, tmp_path, "--resume", str(lab2_run / "netG_model_epoch_1.pth"))
    assert_resumed_as_epoch_2(lab2_run, tmp_path)
    # the flags given otherwise are named; the lab, left to the checkpoint, is not
    changed = [line for line in (tmp_path / "log.txt").read_text().splitlines() if line.startswith("flags changed")]
    assert changed == [f"flags changed since that checkpoint: --result_path {lab2_run} -> {tmp_path}, --image_every 1 "
                       f"-> 200; this run goes on with the new values"]
    # the resumed run rebuilt lab2 from the checkpoint alone
    assert torch.load(tmp_path / "netG_model_epoch_2.pth", weights_only=False)[
        "generator_config"]["extra_same_block"]


def test_a_run_resumed_with_another_learning_rate_trains_at_it(tiny_json, lab2_run, tmp_path):
    run_frame(tiny_json, tmp_path, "--resume", str(lab2_run / "netG_model_epoch_1.pth"), "--lr_g", "0.00005",
              "--lr_dI", "0.00002", "--iterations_per_epoch", "1", "--image_every", "1")
    assert "--lr_g 0.0001 -> 5e-05, --lr_dI 0.0001 -> 2e-05, --iterations_per_epoch 0 -> 1; this run goes on with " \
           "the new values" in (tmp_path / "log.txt").read_text()
    assert [record["lr_g"] for record in metrics(tmp_path)] == [0.00005]
    resumed = load_checkpoint(str(tmp_path / "netG_model_epoch_2.pth"))
    # the rate the schedule decays from (--decay 1: half of it after epoch 2)
    assert [(group["initial_lr"], group["lr"]) for group in resumed["optimizer"]["net_dI"]["param_groups"]] == \
        [(0.00002, 0.00001)]


def test_a_gpu_runs_checkpoint_resumes_on_a_cpu_with_the_cpus_adam_on_the_same_losses(tiny_json, lab2_run, tmp_path):
    whole, part = lab2_run, tmp_path / "part"
    checkpoint = load_checkpoint(str(whole / "netG_model_epoch_1.pth"))
    for state in checkpoint["optimizer"].values():  # as a GPU run writes it: fused Adam, captured in a CUDA graph
        for group in state["param_groups"]:
            group.update(fused=True, capturable=True)
    atomic_save(checkpoint, str(tmp_path / "gpu.pth"))
    run_frame(tiny_json, part, "--resume", str(tmp_path / "gpu.pth"))
    for state in load_checkpoint(str(part / "netG_model_epoch_2.pth"))["optimizer"].values():
        assert all(not group["fused"] and not group["capturable"] for group in state["param_groups"])
    assert_resumed_as_epoch_2(whole, part)


def test_a_cpu_runs_checkpoint_resumes_with_the_fused_adam_of_a_gpu_run(tiny_json, lab2_run, tmp_path, monkeypatch):
    """On a GPU the run's Adam is fused and is handed the skip flag, which the loop kernel a CPU run's checkpoint
    names refuses; the GPU's choice emulated here with the fused kernel a CPU has too."""
    monkeypatch.setattr(trainer, "adam", lambda parameters, lr: Adam(list(parameters), lr=lr, fused=True))
    part = tmp_path / "part"
    run_frame(tiny_json, part, "--resume", str(lab2_run / "netG_model_epoch_1.pth"))
    for state in load_checkpoint(str(part / "netG_model_epoch_2.pth"))["optimizer"].values():
        assert all(group["fused"] for group in state["param_groups"])
    assert_resumed_as_epoch_2(lab2_run, part, rel=1e-3, abs=1e-4)  # the fused kernel rounds apart from the loop


def test_audio_channel_is_read_from_the_data_and_a_disagreeing_flag_is_an_error(tmp_path):
    json_path = write_dinet_json(str(tmp_path), width=80)
    assert load_training_json(json_path).audio_channel == 80
    with pytest.raises(UserError, match=r"--audio_channel 29 disagrees with .*80 wide"):
        run_frame(json_path, tmp_path / "run", "--audio_channel", "29")


def test_dinet_made_json_with_paths_relative_to_the_working_directory_loads(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    os.makedirs("asserts/training_data")
    json_path = write_dinet_json("asserts/training_data", relative_to_cwd=True)
    training_set = load_training_json(json_path)
    assert training_set.audio_feature == "deepspeech" and training_set.audio_channel == 29
    assert all(os.path.isfile(p) for clips in training_set.videos.values() for c in clips for p in c.frame_paths)


def test_batch_larger_than_the_data_is_a_clear_error(tiny_json, tmp_path):
    with pytest.raises(UserError, match="--batch_size 64 is larger than the 4 samples per epoch"):
        run_frame(tiny_json, tmp_path, "--batch_size", "64")


def test_lab_command_runs_from_the_shell_and_prints_the_log_line(tiny_json, tmp_path):
    result = subprocess.run([sys.executable, "train_DINet_frame.py", "--augment_num=2", "--mouth_region_size=64",
                             "--batch_size=2", f"--result_path={tmp_path}", f"--train_data={tiny_json}",
                             "--vgg19_weights=random", "--non_decay=1", "--decay=1", "--num_workers=1"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("===>")]
    assert len(lines) == 4 and all(LOG_LINE.match(line) for line in lines)
    assert (tmp_path / "netG_model_epoch_2.pth").exists() and not (tmp_path / "netG_model_epoch_1.pth").exists()


def test_missing_training_json_is_one_line_and_nonzero_exit(tmp_path):
    result = subprocess.run([sys.executable, "train_DINet_frame.py", f"--train_data={tmp_path}/none.json"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [f"{tmp_path}/none.json: training JSON not found; prepare data "
                                                  f"with `python data_processing.py` or pass --train_data"]


def test_amp_auto_is_measured_fastest_per_device(monkeypatch):
    """--amp auto: on a CUDA GPU from Ampere on, bf16 for dubbing and fp32 (TF32) for training; on a CPU, bf16 only
    where it is native; older GPUs fp32; explicit choices pass through."""
    from common import devices
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert devices.resolve_amp("auto", cuda) == "bf16" and devices.resolve_amp("auto", cuda, training=True) == "off"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    assert devices.resolve_amp("auto", cuda) == "off" and devices.resolve_amp("fp16", cuda, training=True) == "fp16"
    for native in (True, False):
        monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: native)
        expected = "bf16" if native else "off"
        assert devices.resolve_amp("auto", cpu) == devices.resolve_amp("auto", cpu, training=True) == expected
