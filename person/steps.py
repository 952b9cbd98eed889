"""Running a recipe's steps: each one a command of the repository (printed before it runs, as it can be typed) or a
piece of work done here, skipped when its outputs exist, so that the same command line continues an interrupted run.
Before each step a progress line: a bar over the estimated time, the time so far and what is left, the estimate
corrected by how long the steps that ran took against theirs. The seconds each step took are kept in a JSON file.
"""
import json
import os
import shlex
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import Callable, Optional

from common.errors import Stopped, UserError, signals_handled
from common.files import write_atomically

BAR = 24


@dataclass
class Step:
    name: str                 # its key in the record of times
    label: str                # what the progress line calls it
    outputs: list             # the step is finished when every one of these exists
    seconds: float            # estimated
    command: Optional[list] = None      # a command of the repository, run as a process
    action: Optional[Callable] = None   # or work done in this process
    after: Optional[Callable] = None    # done once the command succeeded

    def finished(self):
        return all(os.path.exists(path) for path in self.outputs)


def duration(seconds):
    """'45 s', '12 min', '3 h 05 min'."""
    minutes = round(seconds / 60)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def progress_line(index, steps, elapsed, measured):
    """The line before step `index` (from 0) of `steps`: a bar over the estimated seconds of the steps before it,
    the time so far, and the estimate of the rest scaled by `measured` = (seconds taken, seconds estimated) of the
    steps that ran."""
    total = sum(step.seconds for step in steps)
    done = sum(step.seconds for step in steps[:index])
    taken, estimated = measured
    # corrected once the steps that ran are a tenth of the whole: before, a few short steps would sway it
    left = (total - done) * (taken / estimated if estimated >= 0.1 * total else 1.0)
    filled = round(BAR * done / total) if total else BAR
    return (f"[{'#' * filled}{'.' * (BAR - filled)}] step {index + 1}/{len(steps)}: {steps[index].label} · "
            f"{duration(elapsed)} so far · about {duration(left)} left")


def run_process(command, cwd):
    """Run `command` in `cwd` to its end: (its exit status, the signal that reached this process meanwhile, or None).
    Ctrl-C in a terminal reaches the command too (its process group), which stops by itself, a training command after
    writing a checkpoint: wait for it. SIGTERM and SIGHUP sent to this process alone are passed on. A command may
    end well although stopped, when the signal came as it finished: the caller stops after it all the same."""
    process, received = subprocess.Popen(command, cwd=cwd), []

    def pass_on(number, frame):
        received.append(number)
        process.send_signal(number)
    with signals_handled((signal.SIGTERM, signal.SIGHUP), pass_on):
        while True:
            try:
                return process.wait(), next(iter(received), None)
            except KeyboardInterrupt:
                received.append(signal.SIGINT)


class Recipe:
    """Steps run in order; `record` keeps the seconds each took, across runs."""

    def __init__(self, steps, record, cwd):
        self.steps, self.record, self.cwd = steps, record, cwd
        self.times = {}
        if os.path.isfile(record):
            with open(record) as f:
                self.times = json.load(f)

    def run(self):
        started = time.time()
        taken = estimated = 0.0
        for index, step in enumerate(self.steps):
            print("\n" + progress_line(index, self.steps, time.time() - started, (taken, estimated)), flush=True)
            if step.finished():
                print(f"done already: {', '.join(step.outputs)}", flush=True)
                continue
            step_started, stop = time.time(), None
            if step.command:
                print("$ " + shlex.join(step.command), flush=True)
                status, stop = run_process(step.command, self.cwd)
                if status != 0:
                    self.failed(step, status)
                if step.after:
                    step.after()
            else:
                try:
                    step.action()
                except KeyboardInterrupt:  # its output is written under another name first: nothing is left half-done
                    self.failed(step, -signal.SIGINT)
            seconds = time.time() - step_started
            taken, estimated = taken + seconds, estimated + step.seconds
            self.times[step.name] = seconds
            write_atomically(self.record, lambda f: json.dump(self.times, f, indent=1), mode="w")
            if stop:  # the step finished as the signal came: the run stops here all the same
                print(f"stopped after {step.label}: run the same command again to continue from there", flush=True)
                raise Stopped(128 + stop)
        return time.time() - started

    def failed(self, step, status):
        if status < 0 or status > 128:  # stopped by a signal: Ctrl-C, a scheduler's SIGTERM
            print(f"stopped during {step.label}: run the same command again to continue from there", flush=True)
            raise Stopped(128 - status if status < 0 else status)
        raise UserError(f"{step.label}: the command above failed (exit status {status}, its message says why); fix "
                        f"that and run the same command again, finished steps are skipped")
