"""The exceptions library code raises for what a user must fix, and how a command reports them.

Library packages (models, data, media, engine, dubbing, evaluation) raise `UserError` with one line that names
the file or flag and the fix; the command-line scripts run their `main` through `run_command`, which prints that
line and exits non-zero. Tracebacks stay for bugs.
"""
import argparse
import contextlib
import signal
import sys


class UserError(Exception):
    """Input a user can fix (a missing file, a bad flag, a full disk): the message is one line naming the file or
    flag and the fix. Raised in a DataLoader worker, it reaches the main process with the worker's traceback as its
    message; the original line is taken back from that traceback's last line."""

    def __init__(self, message):
        if "\n" in message and "Traceback" in message:
            message = message.rstrip().splitlines()[-1].split(": ", 1)[-1]
        super().__init__(message)


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser whose refusal of a flag is its one line, with where the flags are listed, not the usage of
    every flag above it (some fifty lines for the training scripts)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (python {self.prog} --help lists the flags)\n")


def permission_denied(path):
    """The one line for a file this user may not read or write."""
    return UserError(f"{path}: permission denied for this user; change its permissions (chmod, chown) or use "
                     f"another path")


class Stopped(Exception):
    """A run stopped on request (Ctrl-C, a scheduler's SIGTERM) after saving what it must; `status` is the exit
    status the command ends with (128 + the signal's number)."""

    def __init__(self, status):
        super().__init__(f"stopped, exit status {status}")
        self.status = status


def interrupt(signum, frame):
    """A signal handler: the signal stops the program as Ctrl-C does, through every cleanup on the way out."""
    raise KeyboardInterrupt(signum)


@contextlib.contextmanager
def signals_handled(numbers, handler):
    """`handler` for the signals of `numbers` within the block, but for one the process was started with ignored
    (nohup's SIGHUP), which stays ignored; yields those handled, and gives back their earlier handlers after it."""
    handlers = {number: signal.signal(number, handler) for number in numbers
                if signal.getsignal(number) != signal.SIG_IGN}
    try:
        yield list(handlers)
    finally:
        for number, handler in handlers.items():
            signal.signal(number, handler)


@contextlib.contextmanager
def stopped_without(output, then=None):
    """Ctrl-C, a scheduler's SIGTERM or a closed terminal's SIGHUP ends the block (its partial output removed on the
    way out) with one line, `stopped by SIGINT: OUTPUT not written` (`; THEN` added when given), and exit status
    128 + the signal's number. A signal the run was started with ignored (nohup's SIGHUP) stays ignored, and so does
    every one after the first."""
    def stop(number, frame):  # a second Ctrl-C would cut the cleanup short, leaving threads running as Python exits
        for stopping in handled:
            signal.signal(stopping, signal.SIG_IGN)
        interrupt(number, frame)
    with signals_handled((signal.SIGINT, signal.SIGTERM, signal.SIGHUP), stop) as handled:
        try:
            yield
        except KeyboardInterrupt as stopped:
            number = stopped.args[0] if stopped.args else signal.SIGINT
            print(f"stopped by {signal.Signals(number).name}: {output} not written" + (f"; {then}" if then else ""),
                  file=sys.stderr)
            sys.exit(128 + number)


def run_command(main, *args, **kwargs):
    """main(*args, **kwargs) as a command: a UserError (or a file this user may not read or write) ends it with its
    one line on stderr and exit status 1, a Stopped with its status."""
    try:
        return main(*args, **kwargs)
    except UserError as error:
        raise SystemExit(str(error)) from None  # Python prints it to stderr and exits with status 1
    except PermissionError as error:  # a file of the user's, read or written anywhere: theirs to fix, not a bug
        if error.filename is None:
            raise
        raise SystemExit(str(permission_denied(error.filename))) from None
    except Stopped as stop:
        raise SystemExit(stop.status) from None
