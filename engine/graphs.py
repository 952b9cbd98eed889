"""--compile reduce-overhead: the whole training step (train_step: forwards, backwards, the fused Adam updates, the
non-finite checks and counters) recorded once as a CUDA graph and replayed each iteration, one launch instead of
thousands. It needs a step that reads nothing back to the host, which train_step is.

Where it cannot run (not a GPU, torchrun, fp16's gradient scaler) or the capture fails, the run goes on without it,
saying why in one line. A failed capture has run nothing (a capture records kernels, it does not execute them), so
the step is then run as usual.
"""
import torch

from .trainer import train_step

WARMUP_STEPS = 3  # eager steps before the capture: cuDNN's algorithm choice and lazy initialisations done
WITHOUT_GRAPHS = "training without CUDA graphs"  # how the log says the run gave them up


def unsupported(stage, runtime):
    """Why the step cannot be a CUDA graph in this run, or None."""
    if runtime.device.type != "cuda":
        return f"CUDA graphs need a CUDA device and this run is on {runtime.device}"
    if runtime.distributed:
        return "not under torchrun (the gradients' all-reduce is not captured)"
    if stage.precision.amp == "fp16":
        return "not with --amp fp16 (its gradient scaler)"
    return None


class StepRunner:
    """runner(batch, counters) -> train_step's (names, values, counters, rows), eagerly or as a replayed CUDA graph."""

    def __init__(self, stage, runtime, mode, say=print):
        self.stage, self.runtime = stage, runtime
        self.say = say
        self.graphed = mode == "reduce-overhead"
        why = unsupported(stage, runtime) if self.graphed else None
        if why:
            self.give_up(why)
        self.eager_steps = 0
        self.graph = None

    def give_up(self, why):
        self.say(f"--compile reduce-overhead: {why}; {WITHOUT_GRAPHS}")
        self.graphed = False

    def __call__(self, batch, counters):
        if not self.graphed or self.eager_steps < WARMUP_STEPS:
            self.eager_steps += 1
            return self.warm_up(batch, counters) if self.graphed else train_step(self.stage, batch, counters,
                                                                                  self.runtime)
        if self.graph is None or self.learning_rates() != self.captured_rates:
            try:
                self.capture(batch, counters)
            except RuntimeError as error:  # nothing ran: the step is taken eagerly, as from now on
                self.graph = None
                self.set_capturable(False)  # an eager step with it is slower
                self.give_up(f"capturing the step failed ({str(error).splitlines()[0]})")
                return train_step(self.stage, batch, counters, self.runtime)
        for key, value in batch.items():
            self.inputs[key].copy_(value, non_blocking=True)
        if counters is not self.counters:
            self.counters.copy_(counters)
        self.graph.replay()
        return self.outputs

    def warm_up(self, batch, counters):
        """An eager step on a side stream, as PyTorch asks before a capture."""
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            result = train_step(self.stage, batch, counters, self.runtime)
        torch.cuda.current_stream().wait_stream(stream)
        return result

    def learning_rates(self):
        return [group["lr"] for optimizer in self.stage.optimizers.values() for group in optimizer.param_groups]

    def set_capturable(self, on):
        for optimizer in self.stage.optimizers.values():
            for group in optimizer.param_groups:
                group["capturable"] = on

    def capture(self, batch, counters):
        """Record train_step on static copies of the batch and counters; the graph writes its new counters back into
        its own, so each replay continues from the last. Learning rates are baked in: a new one is a new capture."""
        # a recapture (each new learning rate) frees the last graph's memory first, its gradients too: two graphs of
        # the clip stage would not fit one card
        self.graph = self.inputs = self.outputs = None
        for optimizer in self.stage.optimizers.values():
            optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        self.inputs = {key: value.clone() for key, value in batch.items()}
        self.counters = counters.clone()
        self.set_capturable(True)  # the step counts stay on the device, as a capture needs
        self.stage.precision.autocast_cache = False  # cached weight casts would not outlive the capture
        graph = torch.cuda.CUDAGraph()
        # thread_local: the loader's pin-memory thread may call CUDA (pinning the next batch) while this thread
        # captures; under "global" that call would break the capture and leave that thread with the error
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            names, values, new_counters, rows = train_step(self.stage, self.inputs, self.counters, self.runtime)
            self.counters.copy_(new_counters)
        self.graph, self.captured_rates = graph, self.learning_rates()
        self.outputs = (names, values, self.counters, rows)
