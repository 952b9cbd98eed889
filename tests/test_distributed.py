"""torchrun: two CPU processes (gloo, DDP, SyncBatchNorm) train as one process with the same global batch."""
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT
from engine.trainer import EpochOrder

COMMON = ["--vgg19_weights", "random", "--device", "cpu", "--num_workers", "0", "--augment_num", "6",
          "--mouth_region_size", "64", "--non_decay", "1", "--decay", "0", "--checkpoint", "1",
          "--iterations_per_epoch", "3", "--amp", "off",
          # Adam's first steps move every weight by about lr whatever the gradient's size, so rounding-level
          # differences in near-zero gradients change signs; a small lr keeps those from hiding real differences
          "--lr_g", "1e-6", "--lr_dI", "1e-6"]


def losses(result_path):
    with open(os.path.join(result_path, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_each_process_takes_its_slice_of_the_single_process_global_batch():
    single = list(EpochOrder(20, 4, seed=3))
    for epoch in (0, 1):
        whole = EpochOrder(20, 4, seed=3)
        whole.set_epoch(epoch)
        parts = []
        for rank in range(2):
            part = EpochOrder(20, 2, seed=3, rank=rank, world_size=2)
            part.set_epoch(epoch)
            parts.append(list(part))
        batches = list(whole)
        for b in range(len(batches) // 4):
            assert sorted(batches[4 * b: 4 * b + 4]) == sorted(parts[0][2 * b: 2 * b + 2] + parts[1][2 * b: 2 * b + 2])
    assert single != batches  # another epoch, another order
    resumed = EpochOrder(20, 4, seed=3)
    resumed.set_epoch(1, skip_batches=2)
    assert list(resumed) == batches[8:] and len(resumed) == 12


@pytest.mark.long
def test_two_gloo_processes_reach_the_losses_of_one_process_with_the_same_global_batch(tiny_json, tmp_path):
    """Same losses to 5e-4 relative. fp32 alone separates them by up to ~2e-4 (oneDNN blocks a batch of 2 and
    of 4 differently, and the random VGG19 perception sums many such differences); half the global batch on one
    process (what an unsynchronised process would train on) differs by far more, which the test checks too."""
    one, two, half = tmp_path / "one", tmp_path / "two", tmp_path / "half"
    script = os.path.join(ROOT, "train_DINet_frame.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    singles = [subprocess.Popen([sys.executable, script, "--train_data", tiny_json, "--result_path", str(path),
                                 "--batch_size", batch, *COMMON], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
               for path, batch in ((one, "4"), (half, "2"))]  # side by side: one thread each
    for single in singles:
        _, error = single.communicate(timeout=300)
        assert single.returncode == 0, error[-3000:]
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             script, "--train_data", tiny_json, "--result_path", str(two), "--batch_size", "2", *COMMON],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "on cpu x2" in (two / "log.txt").read_text()
    single, double = losses(one), losses(two)
    assert len(single) == len(double) == 3
    names = ("Loss_DI", "Loss_GI", "Loss_perception")
    for a, b in zip(single, double):
        for name in names:
            assert b[name] == pytest.approx(a[name], rel=5e-4), (name, a, b)
    assert max(abs(h[name] / a[name] - 1) for a, h in zip(single, losses(half)) for name in names) > 1e-2
    # rank 0 alone writes: one log, one checkpoint
    assert sorted(p.name for p in two.glob("*.pth")) == ["netG_model_epoch_1.pth"]


def on_two_processes(target, tmp_path, *args):
    """target(rank, rendezvous path, *args, queue) in two spawned processes; {rank: what it put on the queue after its
    rank}."""
    import torch.multiprocessing as mp
    context = mp.get_context("spawn")
    queue = context.SimpleQueue()
    processes = [context.Process(target=target, args=(rank, tmp_path / "rendezvous", *args, queue))
                 for rank in range(2)]
    for process in processes:
        process.start()
    outputs = {output[0]: output[1:] for output in (queue.get() for _ in processes)}
    for process in processes:
        process.join(60)
    return outputs


def batchnorm_on_two_processes(rank, path, inputs, queue):
    import torch
    import torch.distributed as dist
    from engine.distributed import CrossProcessBatchNorm
    dist.init_process_group("gloo", init_method=f"file://{path}", rank=rank, world_size=2)
    norm = CrossProcessBatchNorm(3)
    norm.weight.data = torch.tensor([1.0, 2.0, 0.5])
    x = inputs[rank * 3:(rank + 1) * 3].clone().requires_grad_()
    (norm(x) * torch.arange(x.numel()).view_as(x)).sum().backward()
    # the weight's gradient is summed over processes, as DDP's averaging over 2 processes of 2x the mean loss
    torch.distributed.all_reduce(norm.weight.grad)
    # plain arrays: tensors would travel as shared-memory handles that die with this process
    queue.put((rank, *(t.numpy() for t in (x.grad, norm.weight.grad, norm.running_mean, norm.running_var))))
    dist.destroy_process_group()


def test_cross_process_batchnorm_normalises_by_the_global_batch_with_the_same_gradients(tmp_path):
    import torch
    torch.manual_seed(0)
    inputs = torch.randn(6, 3, 4, 5) * 3 + 1
    reference = torch.nn.BatchNorm2d(3)
    reference.weight.data = torch.tensor([1.0, 2.0, 0.5])
    x = inputs.clone().requires_grad_()
    (reference(x) * torch.cat([torch.arange(x[:3].numel()).view_as(x[:3])] * 2)).sum().backward()
    outputs = on_two_processes(batchnorm_on_two_processes, tmp_path, inputs)
    results = [[torch.from_numpy(array) for array in outputs[rank]] for rank in range(2)]
    grads = torch.cat([result[0] for result in results])
    assert torch.allclose(grads, x.grad, atol=1e-5)
    assert torch.allclose(results[0][1], reference.weight.grad, atol=1e-4)
    assert torch.allclose(results[0][2], reference.running_mean, atol=1e-6)
    assert torch.allclose(results[0][3], reference.running_var, atol=1e-5)


def votes_on_two_processes(rank, path, flags, queue):
    import torch
    import torch.distributed as dist
    from engine.distributed import LateVote, Runtime
    dist.init_process_group("gloo", init_method=f"file://{path}", rank=rank, world_size=2)
    vote = LateVote(Runtime(torch.device("cpu"), rank, 2))
    queue.put((rank, [vote(flag) for flag in flags[rank]] + [vote.settle()]))
    dist.destroy_process_group()


@pytest.mark.parametrize("flags", [([0, 0, 1, 0, 0], [0, 0, 0, 0, 0]), ([0, 0, 0, 0, 0], [0, 0, 0, 0, 1])],
                         ids=["rank 0 at the 3rd", "rank 1 at the last"])
def test_a_stop_vote_reaches_every_process_at_the_same_iteration_one_later(tmp_path, flags):
    """The per-iteration stop vote under torchrun is read one iteration late (so the host never waits for the
    device's step): every process sees a flag raised on any one at the next iteration, or at the epoch's end."""
    outcomes = {rank: output[0] for rank, output in on_two_processes(votes_on_two_processes, tmp_path, flags).items()}
    raised = next(i for i in range(5) if flags[0][i] or flags[1][i])
    expected = [i == raised + 1 for i in range(6)]  # 5 votes, then the epoch end's settle
    assert outcomes == {0: expected, 1: expected}
