"""A training step waits for nothing: no value is read back to the host inside it, a non-finite step is skipped on
the device, and the losses stay what they were."""
import copy
from contextlib import contextmanager

import pytest
import torch

from benchmark.training import training_stage
from conftest import write_dinet_json
from engine.distributed import Runtime
from engine.trainer import train_step

CPU = torch.device("cpu")
# every way Python code reads a tensor's value on the host (each waits for a GPU)
READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__")

# the losses of 3 steps (2 of the clip stage) on one seeded batch in one thread, from the code before the step stopped
# reading values back (a SyncNet's losses move by ~1e-3 with the number of threads alone; on a GPU, Adam's fused
# kernel rounds differently from its loop: the third step's losses by ~1e-4)
BEFORE = {
    "train_frame": [{"Loss_DI": 0.5126606822013855, "Loss_GI": 0.8298519253730774, "Loss_perception": 0.6097898483276367},
                    {"Loss_DI": 0.4235173761844635, "Loss_GI": 0.5866864323616028, "Loss_perception": 0.6013814806938171},
                    {"Loss_DI": 0.34363651275634766, "Loss_GI": 0.25631147623062134,
                     "Loss_perception": 0.6251956224441528}],
    "train_clip": [{"Loss_DI": 0.5328037738800049, "Loss_GI": 0.8496081233024597, "Loss_DV": 0.5492208003997803,
                    "Loss_GV": 0.8987613320350647, "Loss_perception": 0.5768484473228455,
                    "Loss_sync": 0.19073954224586487},
                   {"Loss_DI": 0.41809210181236267, "Loss_GI": 0.5222958326339722, "Loss_DV": 0.4455457329750061,
                    "Loss_GV": 0.6078420877456665, "Loss_perception": 0.5751163363456726,
                    "Loss_sync": 0.17643272876739502}],
    "syncnet": [{"Loss_sync": 0.7065498232841492, "Acc": 0.0}, {"Loss_sync": 0.561748743057251, "Acc": 0.75},
                {"Loss_sync": 0.4370966851711273, "Acc": 0.75}],
}


def seeded_stage(task, folder):
    """(stage, batch) from seed 0: the frame and clip stages on bench's synthetic batch at mouth 64, a SyncNet
    (embedding) on 4 windows of a DINet-made training set written under `folder`."""
    torch.manual_seed(0)
    if task != "syncnet":
        return training_stage(task, 64, 2 if task == "train_frame" else 1, CPU, "fp32", False, "lab1")
    from config.config import syncnet_parser
    from data.training_json import load_training_json
    from engine.syncnet_stage import SyncNetStage
    folder = str(folder)
    json_path = write_dinet_json(folder, videos=3, clips=12, width=29)
    opt = syncnet_parser("test", folder).parse_args(["--train_data", json_path, "--result_path", folder, "--device",
                                                     "cpu", "--batch_size", "4", "--syncnet_arch", "embedding"])
    torch.manual_seed(0)
    training_set = load_training_json(json_path)
    stage = SyncNetStage.create(opt, training_set, Runtime(CPU), None)
    dataset = stage.dataset(training_set)
    return stage, torch.utils.data.default_collate([dataset[(i, i)] for i in range(4)])


def fused_optimizers(stage):
    """The stage's Adams as on a GPU: fused, told on the device to skip (a CPU's loop Adam reads the flag on the host,
    which waits for nothing there)."""
    for name, optimizer in stage.optimizers.items():
        stage.optimizers[name] = torch.optim.Adam(optimizer.param_groups[0]["params"], lr=optimizer.defaults["lr"],
                                                  fused=True)
    return stage


def run_steps(stage, batch, steps, counters=None):
    """`steps` of train_step; returns ([{loss: value}] per step, the counters after)."""
    counters = torch.zeros(2) if counters is None else counters
    losses = []
    for _ in range(steps):
        names, values, counters, _ = train_step(stage, batch, counters, Runtime(CPU))
        losses.append(dict(zip(names, values.tolist())))
    return losses, counters


@contextmanager
def host_reads_forbidden():
    """Every READS method of a tensor raises while inside."""
    saved = {name: getattr(torch.Tensor, name) for name in READS}

    def forbidden(name):
        def read(*args, **kwargs):
            raise AssertionError(f"Tensor.{name} called inside a training step (it waits for the device)")
        return read
    try:
        for name in READS:
            setattr(torch.Tensor, name, forbidden(name))
        yield
    finally:
        for name, method in saved.items():
            setattr(torch.Tensor, name, method)


@pytest.mark.parametrize("task", ["train_frame", "syncnet"])
def test_a_training_step_reads_no_value_back_to_the_host(task, tmp_path):
    stage, batch = seeded_stage(task, tmp_path)
    fused_optimizers(stage)
    _, counters = run_steps(stage, batch, 1)  # the first fills one-off caches (AdaAT's channel pairs, on the host)
    with host_reads_forbidden():
        _, _, counters, _ = train_step(stage, batch, counters, Runtime(CPU))
    assert counters.tolist() == [0, 0]


@pytest.mark.parametrize("fused", [False, True], ids=["cpu_adam", "fused_adam"])
def test_a_non_finite_step_leaves_weights_statistics_and_optimizer_state_as_they_were_and_is_counted(fused, tmp_path):
    stage, batch = seeded_stage("train_frame", tmp_path)
    if fused:
        fused_optimizers(stage)
    _, counters = run_steps(stage, batch, 1)  # Adam has state to keep
    before = copy.deepcopy(({name: network.state_dict() for name, network in stage.networks().items()},
                            {name: optimizer.state_dict() for name, optimizer in stage.optimizers.items()}))
    poisoned = {**batch, "source_masked": batch["source_masked"] * float("nan")}
    losses, counters = run_steps(stage, poisoned, 2, counters)
    assert counters.tolist() == [2, 2]  # skipped in all, in a row
    assert all(value != value for value in losses[0].values())  # NaN: what the log line shows
    after = ({name: network.state_dict() for name, network in stage.networks().items()},
             {name: optimizer.state_dict() for name, optimizer in stage.optimizers.items()})
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    _, counters = run_steps(stage, batch, 1, counters)
    assert counters.tolist() == [2, 0]  # a finite step ends the run of non-finite ones
    assert any(not torch.equal(a, b) for a, b in zip(stage.net_g.state_dict().values(),
                                                     before[0]["net_g"].values()))


@pytest.mark.parametrize("task", ["train_frame", "train_clip", "syncnet"])
def test_losses_of_a_seeded_batch_are_those_of_the_code_that_read_them_back_each_step(task, tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        stage, batch = seeded_stage(task, tmp_path)
        losses, _ = run_steps(stage, batch, len(BEFORE[task]))
    finally:
        torch.set_num_threads(threads)
    for step, (ours, before) in enumerate(zip(losses, BEFORE[task])):
        assert list(ours) == list(before)
        for name in before:
            assert ours[name] == pytest.approx(before[name], rel=5e-3, abs=1e-6), (step, name)


def test_cuda_graphs_on_a_cpu_say_why_in_one_line_and_the_run_trains_without_them(tiny_json, tmp_path):
    from test_frame_training import metrics, run_frame
    run_frame(tiny_json, tmp_path, "--compile", "reduce-overhead", "--decay", "0")
    log = (tmp_path / "log.txt").read_text()
    assert log.count("--compile reduce-overhead:") == 1
    assert ("--compile reduce-overhead: CUDA graphs need a CUDA device and this run is on cpu; training without CUDA "
            "graphs") in log
    assert [row["step"] for row in metrics(tmp_path)] == [0, 1]  # every step trained and logged
    assert (tmp_path / "netG_model_epoch_1.pth").exists()
