"""The generator alone, as dubbing runs it."""
import torch

from engine.compare import lab_config
from models import DINet
from models.fast import optimize_for_inference

from .measure import STAGES, generator_inputs, network_flops, reference_once_flops, selected, timed


def bench_generator(opt, device, precision, lab):
    """The generator as optimize_for_inference prepares it (BatchNorms folded, its fast kernels, bf16 weights under
    bf16, channels_last): the whole network (reference branch every frame), and as dubbing runs it (references
    encoded once; its GFLOPs per frame leave the reference branch out)."""
    config = lab_config(lab)
    network = DINet.from_config(config).to(device).eval()
    fast = optimize_for_inference(network, device, "bf16" if precision == "bf16" else None, channels_last=True)
    rows = []
    for mouth_size, _ in selected(STAGES, opt.mouths):
        batch = opt.generator_batch if device.type == "cuda" else 1
        inputs = generator_inputs(mouth_size, batch, config.audio_channel, device)
        masked, reference, audio = (tensor.contiguous(memory_format=torch.channels_last) if tensor.dim() == 4
                                    else tensor for tensor in inputs)
        state = fast.encode_reference(reference[:1])
        for reference_once, function, flops in (
                (False, lambda: fast(masked, reference, audio), network_flops(network, inputs)),
                (True, lambda: fast.generate(masked, audio, state), reference_once_flops(network, inputs))):
            if opt.compile == "on":
                function = torch.compile(function)
            seconds = timed(function, device, opt.iterations, opt.warmup)
            rows.append(dict(task="generator", lab=lab, mouth=mouth_size, batch=batch, precision=precision,
                             channels_last=True, reference_once=reference_once, compiled=opt.compile == "on",
                             frames_per_s=batch / seconds, seconds_per_iter=seconds, gflops_per_sample=flops / 1e9,
                             achieved_gflops_per_s=flops * batch / seconds / 1e9))
    return rows
