"""One dubbing run in a process of its own, as a user's command runs it, so nothing left over from other rows
(threads, allocator state, the training rows' memory) is measured with it. The result is printed as JSON.

    python -m benchmark.processes dub JOB_JSON         # dubbing as inference.py runs it
    python -m benchmark.processes published JOB_JSON   # DINet's published inference loop
"""
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile

import torch

from common.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_network(job):
    from models import DINet, GeneratorConfig
    network = DINet.from_config(GeneratorConfig.from_dict(job["config"])).eval()
    network.load_state_dict(torch.load(job["weights"], weights_only=True))
    return network


def dub_job(job):
    """Dubbing as `python inference.py` runs it (the caller sets OMP_WAIT_POLICY=PASSIVE, which must be set before
    torch loads)."""
    from dubbing.pipeline import DubbingModel, dub, host_threads
    from inference import tune_cpu_allocator
    device = torch.device(job["device"])
    if device.type == "cpu":
        tune_cpu_allocator()
    timings = {}
    result = dub(job["video"], job["audio"], DubbingModel(load_network(job).to(device), job["mouth"], "mel"),
                 job["output"], device, landmark_csv=job["landmarks"], batch_size=job["batch"], amp=job["amp"],
                 timings=timings, progress=False, decoder=job.get("decoder", "auto"))
    return dict(frames=result.frames, batch=result.batch_size, host_threads=host_threads(device), timings=timings,
                decoder=result.decoder, hardware_failure=result.hardware_failure)


def published_job(job):
    """DINet's published inference loop with the default environment, as its inference.py runs: the generator set
    up the published way, the audio features computed first, untimed."""
    from benchmark.published import published_inference, published_way
    from dubbing.pipeline import load_audio_features
    device = torch.device(job["device"])
    network = published_way(load_network(job)).to(device)
    with tempfile.TemporaryDirectory(prefix="bench-published-") as folder:
        features = load_audio_features(job["audio"], "mel", None, folder)
        seconds, frames = published_inference(job["video"], job["audio"], job["landmarks"], features, network,
                                              job["mouth"], job["frames"], folder, device)
    return dict(frames=frames, seconds=seconds)


JOBS = {"dub": dub_job, "published": published_job}


def run_within(command, seconds=None, **options):
    """subprocess.run(command, capture_output=True, text=True, **options) in a process group of its own: past
    `seconds` (None: no limit), or when this process is interrupted, the command and every process it started (its
    ffmpegs, its loader workers) are killed; past `seconds` subprocess.TimeoutExpired is raised."""
    with subprocess.Popen(command, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          **options) as process:
        try:
            output, errors = process.communicate(timeout=seconds)
        except BaseException:
            kill_group(process)  # its group is out of the terminal's, which Ctrl-C reaches
            process.communicate()
            raise
    return subprocess.CompletedProcess(command, process.returncode, output, errors)


def kill_group(process):
    """Kill a process started with start_new_session=True and every process it started (its ffmpegs, its loader
    workers)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def run_job(kind, job, environment=None, seconds=None):
    """Run JOBS[kind](job) in a fresh Python process, stopped past `seconds` (run_within); its result."""
    done = run_within([sys.executable, "-m", "benchmark.processes", kind, json.dumps(job)], seconds, cwd=ROOT,
                      env=environment)
    if done.returncode != 0:
        raise UserError(f"dubbing at mouth {job['mouth']} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    print(json.dumps(JOBS[sys.argv[1]](json.loads(sys.argv[2]))))
