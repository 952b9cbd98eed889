"""Dub in a browser, or over HTTP: a Gradio app over the dubbing inference.py runs.

    python app.py [--checkpoint PATH] [--checkpoint_dir ./asserts] [--host 127.0.0.1] [--port 7860] \
        [--max_upload_mb 500] [--auth USER:PASS] [--device cpu]

Tab "Dub": a face video (or photo) and speech (any file ffmpeg reads), a generator checkpoint (every *.pth under
--checkpoint_dir that holds a generator, and --checkpoint), the options that matter (precision, whom to dub, the
length policy, a closed mouth on silence; the mouth size comes from the checkpoint); the dubbed video plays in the
page and downloads. Tab "Score": videos scored as evaluate.py scores them. Both are Gradio API endpoints (/dub,
/score), each one job at a time, the rest queued. Errors are the commands' one-line messages. The app listens on
127.0.0.1; any other --host needs --auth. Uploads and results are deleted a day after, and when the app stops
(Ctrl-C, SIGTERM), which ends the jobs under way with a line to their clients.
Needs gradio (pip install -r requirements-app.txt).
"""
import argparse
import contextvars
import functools
import ipaddress
import os
import pickletools
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import zipfile
from contextlib import contextmanager

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no telemetry: the app may run without a network
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")         # as inference.py: the decoder and encoder need the cores

from common.errors import ArgumentParser, Stopped, UserError, interrupt, run_command, signals_handled  # noqa: E402
from config.ranges import integer  # noqa: E402

LPIPS_WEIGHTS = ("pretrained", "random")  # what the Score tab offers of evaluate.py's --lpips_weights
NO_CHECKPOINT = ("no generator checkpoint under {folder}; make one with `python demo.py` (it writes "
                 "./asserts/demo/training_model_weight/frame_training_64/netG_best.pth) or by training "
                 "(`python train_person.py --videos ...` writes model.pth), then press Refresh, or start the app "
                 "with --checkpoint PATH")


def build_parser():
    parser = ArgumentParser(description=__doc__.splitlines()[0],
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add = parser.add_argument
    add("--checkpoint", default=None, help="a generator checkpoint to offer first (beside those in --checkpoint_dir)")
    add("--checkpoint_dir", default="./asserts", help="where to look for generator checkpoints (*.pth, recursively)")
    add("--host", default="127.0.0.1", help="the IPv4 address to listen on; anything but a loopback address (e.g. "
                                            "0.0.0.0, every interface) needs --auth")
    add("--port", type=integer(1, 65535), default=7860, help="the port to listen on")
    add("--auth", default=None, metavar="USER:PASS", help="the login the page and the API ask for")
    add("--max_upload_mb", type=integer(1), default=500, help="uploads larger than this are refused")
    add("--device", default=None, help="cuda, cuda:N or cpu (default: cuda when available)")
    return parser


def check_options(opt):
    """The flags, before anything starts: one line naming the flag and the fix."""
    credentials = None
    if opt.auth is not None:
        user, _, password = opt.auth.partition(":")
        if not user or not password:
            raise UserError(f"--auth {opt.auth}: pass USER:PASS, both not empty")
        credentials = (user, password)
    try:
        socket.getaddrinfo(opt.host, opt.port)
    except socket.gaierror as error:
        raise UserError(f"--host {opt.host}: the name does not resolve ({error.strerror}); pass an "
                        f"IP address (127.0.0.1, or 0.0.0.0 for every interface) or a name that resolves") from None
    if ":" in opt.host:  # Gradio writes http://HOST:PORT/ unbracketed, and stops with a traceback
        raise UserError(f"--host {opt.host}: an IPv6 address, which Gradio's server cannot take; pass 127.0.0.1 (this "
                        f"machine only) or 0.0.0.0 (every IPv4 interface, with --auth)")
    if not is_loopback(opt.host) and credentials is None:
        raise UserError(f"--host {opt.host}: listening beyond this machine needs --auth USER:PASS (anyone who reaches "
                        f"the port could dub with your models and read the results); add --auth, or drop --host to "
                        f"stay on 127.0.0.1")
    if opt.checkpoint and not os.path.isfile(opt.checkpoint):
        raise UserError(f"--checkpoint {opt.checkpoint}: no such file; check the path")
    if opt.checkpoint:
        from models.checkpoint import check_not_inflating
        check_not_inflating(opt.checkpoint, "--checkpoint", "pass a generator checkpoint this repository wrote")
    if opt.checkpoint and not holds(opt.checkpoint, "net_g"):
        raise UserError(f"--checkpoint {opt.checkpoint}: holds no generator (net_g); pass a generator checkpoint, "
                        f"e.g. netG_best.pth or train_person.py's model.pth")
    return credentials


def is_loopback(host):
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False


def holds(path, key):
    """Whether the torch.save file `path` has a `key` entry (e.g. a generator's "net_g"), read from its pickle's
    opcodes without unpickling it; False for anything else, a compressed pickle too (torch.save stores it as it is;
    a crafted one could inflate to far more memory than the file's size)."""
    try:
        with zipfile.ZipFile(path) as archive:
            pickled = next(info for info in archive.infolist() if info.filename.endswith("/data.pkl"))
            return pickled.compress_type == zipfile.ZIP_STORED and any(
                argument == key for _, argument, _ in pickletools.genops(archive.read(pickled)))
    except (OSError, zipfile.BadZipFile, StopIteration, ValueError):
        return False


def checkpoints_in(folder, key="net_g", pattern=".pth"):
    """The files under `folder` (recursively) named *`pattern` that hold `key`, the newest first; a pipe or a device
    so named is no file (reading one would hang the page)."""
    named = [os.path.join(root, name) for root, _, names in os.walk(folder) for name in names
             if name.endswith(pattern) and not name.startswith(".")]
    found = [path for path in named if os.path.isfile(path) and (key is None or holds(path, key))]
    return sorted(found, key=os.path.getmtime, reverse=True)


def sweep(folder, age=86400, now=None, running=()):
    """Remove the folders under `folder` unchanged for `age` seconds, but those of `running` jobs: the jobs' folders
    a day after, as Gradio's delete_cache does for its own copies."""
    now = time.time() if now is None else now
    for entry in os.scandir(folder):
        if (entry.is_dir(follow_symlinks=False) and now - entry.stat().st_mtime > age
                and entry.path not in running):
            shutil.rmtree(entry.path, ignore_errors=True)


def untold(queue):
    """Whether an event of Gradio's queue `queue` has started but its client has not yet been sent its end (an event
    leaves the session's pending ids as its last message is sent; those still waiting for a worker never started)."""
    waiting = {event._id for events in list(queue.event_queue_per_concurrency_id.values()) for event in events.queue}
    return any(ids - waiting for ids in list(queue.pending_event_ids_session.values()))


def sweep_hourly(jobs):
    while True:
        time.sleep(3600)
        sweep(jobs.folder, running=set(jobs.running))


class Jobs:
    """What the page's two buttons run: inference.py's and evaluate.py's code with the form as their flags, each job
    in its own folder under `folder`, UserErrors turned into the page's error line."""

    def __init__(self, opt, folder):
        self.opt, self.folder = opt, folder
        self.jobs, self.running = 0, set()  # the folders of jobs under way, which the sweep leaves
        self.stopped_by = None  # the number of the signal that stops the app: the jobs under way end, said so
        self.page = None  # the Gradio page, once served

    def told(self, seconds=10):
        """Wait (at most `seconds`) until the jobs under way have ended and their clients have been sent how: a
        server closed sooner resets the connection before the job's last line reaches it."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and (self.running or self.page is not None and untold(self.page._queue)):
            time.sleep(0.05)

    def until_stopped(self, work, *args):
        """work(*args) on a thread of its own while this one waits, so that the app's stop ends the job at once (a
        Stopped raised here, which job() turns into the client's line); the work left behind ends with the app."""
        outcome = []

        def run():
            try:
                outcome.append((work(*args), None))
            except BaseException as error:  # raised here, in the job's thread
                outcome.append((None, error))
        # in this thread's context, where Gradio's progress bar follows the work's tqdm bars
        thread = threading.Thread(target=contextvars.copy_context().run, args=(run,), daemon=True)
        thread.start()
        while thread.is_alive():
            if self.stopped_by:
                raise Stopped(128 + self.stopped_by)
            thread.join(0.1)
        result, error = outcome[0]
        if error is not None:
            raise error
        return result

    def label(self, path):
        """`path` as the page shows it: within --checkpoint_dir, relative to it."""
        inside = os.path.relpath(path, self.opt.checkpoint_dir)
        return path if inside.startswith("..") else inside

    def generator_choices(self):
        paths = checkpoints_in(self.opt.checkpoint_dir)
        if self.opt.checkpoint and os.path.isfile(self.opt.checkpoint):  # it may be deleted while the app runs
            first = os.path.realpath(self.opt.checkpoint)  # compared by name: a file deleted meanwhile is no error
            paths = [self.opt.checkpoint] + [path for path in paths if os.path.realpath(path) != first]
        return [(self.label(path), path) for path in paths]

    def syncnet_choices(self):
        return [("none", "")] + [(self.label(path), path) for path in checkpoints_in(self.opt.checkpoint_dir, "net")]

    def lse_choices(self):
        return [("none", "")] + [(self.label(path), path)
                                 for path in checkpoints_in(self.opt.checkpoint_dir, None, ".model")]

    @staticmethod
    @functools.lru_cache(maxsize=1)
    def _generator(path, changed, device):
        from dubbing.pipeline import load_generator
        return load_generator(path, device)

    def offered(self, flag, path, choices):
        """Refuse `path` unless it is among `choices` as found again now: the API reads no file the page does not
        list, and takes one written since the app started."""
        if not os.path.isfile(path):  # deleted since the page listed it
            raise UserError(f"{flag} {path}: no such file (deleted since the list was made); press Refresh")
        if path not in {value for _, value in choices}:
            raise UserError(f"{flag} {path}: not a file this app offers; pass one the page lists (found under "
                            f"--checkpoint_dir {self.opt.checkpoint_dir}, or --checkpoint)")

    def generator(self, path):
        """The DubbingModel of `path`, kept while the file is unchanged (the next job with it loads nothing)."""
        from common.devices import choose_device
        self.offered("--pretrained_clip_DINet_path", path, self.generator_choices())
        return self._generator(path, os.stat(path).st_mtime_ns, choose_device(self.opt.device))

    def describe(self, path):
        if not path:
            return NO_CHECKPOINT.format(folder=self.opt.checkpoint_dir)
        try:
            generator = self.generator(path)
        except UserError as error:
            return str(error)
        return f"mouth {generator.mouth_size} (read from the checkpoint), {generator.audio_feature} audio features"

    @contextmanager
    def job(self, kind, *uploads):
        """A fresh folder for one job; a UserError (or a bad flag) becomes the page's one-line error, the upload's
        temporary path shown as its file name, and the folder is removed. The server's log gets a line as the job
        starts and one as it ends, saying how."""
        import gradio as gr
        self.jobs += 1
        name, started = f"{kind} job {self.jobs}", time.perf_counter()
        log = lambda what: print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {name}: {what}", file=sys.stderr, flush=True)
        log("started")
        folder = tempfile.mkdtemp(dir=self.folder)
        self.running.add(folder)
        try:
            yield folder
            log(f"done in {time.perf_counter() - started:.1f} s")
        except (UserError, argparse.ArgumentError, Stopped) as error:
            shutil.rmtree(folder, ignore_errors=True)
            if isinstance(error, Stopped):
                stopped_by = signal.Signals(self.stopped_by).name
                log(f"stopped by {stopped_by}")
                message = (f"the app stopped ({stopped_by}) before this {kind} job finished; send it again once the "
                           f"app is back")
            else:
                message = str(error)
                for path in (path for group in uploads
                             for path in ([group] if isinstance(group, str) else group or ())):
                    message = message.replace(path, os.path.basename(path))
                log(f"refused: {message}")
            raise gr.Error(message, duration=None, print_exception=False) from None  # shown until closed, not 10 s
        except BaseException as error:
            shutil.rmtree(folder, ignore_errors=True)
            log(f"failed: {type(error).__name__}: {error}")
            raise
        finally:
            self.running.discard(folder)

    def dub(self, source, speech, checkpoint, amp, face, length, close_on_silence, progress=None):
        """(the dubbed video, what was dubbed), with inference.py's flags from the form."""
        import inference
        with self.job("dub", source, speech) as folder:
            for upload, what in ((source, "--source_video_path: upload the face, a video or a photo"),
                                 (speech, "--driving_audio_path: upload the speech")):
                if not upload:
                    raise UserError(what)
            if not checkpoint:
                raise UserError(NO_CHECKPOINT.format(folder=self.opt.checkpoint_dir))
            # --face=VALUE: a value starting with '-' is the flag's, not another flag
            argv = ["--source_video_path", source, "--driving_audio_path", speech, "--res_video_dir", folder,
                    "--pretrained_clip_DINet_path", checkpoint, "--amp", amp, f"--face={face or 'largest'}",
                    "--length", length, *(["--close_on_silence"] if close_on_silence else []),
                    *(["--device", self.opt.device] if self.opt.device else [])]
            parser = inference.build_parser()
            parser.exit_on_error = False  # a bad value is an ArgumentError here, not an exit
            opt = parser.parse_args(argv)
            inference.check_inputs(opt)
            if progress is not None:
                progress(0, desc="loading the generator")
            generator = self.until_stopped(self.generator, checkpoint)
            result = self.until_stopped(inference.run, opt, generator)
            passed = (f", {result.passed_through} passed through untouched ({result.passed_through_ranges})"
                      if result.passed_through else "")
            notes = "".join(f"\n\nNote: {note}" for note in result.notes)  # inference.py's "note:" lines
            return result.output_path, (f"{result.frames} frames at 25 fps, mouth {generator.mouth_size}: "
                                        f"{result.frames - result.passed_through} dubbed{passed}; "
                                        f"{'; '.join(result.faces)}{notes}")

    def score(self, videos, sources, syncnet, lse_syncnet, lpips_weights):
        """(the table in markdown, its CSV), with evaluate.py's flags from the form (videos scored as they are)."""
        import evaluate
        with self.job("score", videos, sources) as folder:
            if not videos:
                raise UserError("--videos: upload the videos to score")
            if lpips_weights not in LPIPS_WEIGHTS:  # evaluate.py's --lpips_weights also reads a file: not here
                raise UserError(f"--lpips_weights {lpips_weights}: pass {' or '.join(LPIPS_WEIGHTS)}")
            for flag, path, choices in (("--syncnet_path", syncnet, self.syncnet_choices()),
                                        ("--lse_syncnet_path", lse_syncnet, self.lse_choices())):
                if path:
                    self.offered(flag, path, choices)
            argv = ["--videos", *videos, *(["--sources", *sources] if sources else []),
                    *(["--syncnet_path", syncnet] if syncnet else []),
                    *(["--lse_syncnet_path", lse_syncnet] if lse_syncnet else []),
                    "--lpips_weights", lpips_weights, "--csv", os.path.join(folder, "evaluation.csv"),
                    *(["--device", self.opt.device] if self.opt.device else [])]
            csv_path = self.until_stopped(evaluate.main, argv)
            with open(os.path.splitext(csv_path)[0] + ".md") as file:
                return file.read(), csv_path


def build_page(jobs, opt):
    import gradio as gr

    from dubbing.pipeline import LENGTHS

    generators = jobs.generator_choices()
    first = generators[0][1] if generators else None
    # uploads (Gradio's copies) deleted a day after, and all of them when the app stops
    with gr.Blocks(title="DINet dubbing", delete_cache=(3600, 86400)) as page:
        gr.Markdown("# DINet dubbing")
        with gr.Tab("Dub"):
            with gr.Row():
                with gr.Column():
                    # no file_types: Gradio judges a file by its name's type (refusing an .mts camcorder video), the
                    # job by what ffmpeg reads in it, with a line naming the field's flag
                    source = gr.File(label="Face: a video or a photo (--source_video_path)", type="filepath",
                                     elem_id="source")
                    speech = gr.File(label="Speech: an audio file, or a video's soundtrack (--driving_audio_path)",
                                     type="filepath", elem_id="speech")
                    with gr.Row():
                        checkpoint = gr.Dropdown(generators, value=first, scale=4, elem_id="checkpoint",
                                                 label="Generator checkpoint (--pretrained_clip_DINet_path)")
                        refresh = gr.Button("Refresh", scale=1)
                    about = gr.Markdown(jobs.describe(first), elem_id="about")
                    amp = gr.Radio(["auto", "off", "bf16"], value="auto", label="Precision (--amp)",
                                   info="auto: bf16 where the hardware computes it natively, else fp32")
                    face = gr.Textbox("largest", label="Whom to dub (--face)",
                                      info="largest, N (the N-th face from the left) or x,y (the face at that pixel)")
                    length = gr.Dropdown(list(LENGTHS), value="pingpong", label="When video and speech differ in "
                                         "length (--length)", info="pingpong, loop, pad: the speech's length; "
                                         "cut: the shorter of the two")
                    silence = gr.Checkbox(False, label="Closed mouth where the speech is silent (--close_on_silence)")
                    button = gr.Button("Dub", variant="primary", elem_id="dub")
                with gr.Column():
                    video = gr.Video(label="Dubbed video", interactive=False, height=560, elem_id="result")
                    done = gr.Markdown(elem_id="done")
        with gr.Tab("Score"):
            with gr.Row():
                with gr.Column():
                    videos = gr.File(label="Videos to score, with their sound (--videos)", file_count="multiple",
                                     type="filepath")
                    sources = gr.File(label="Their sources, in the same order, optional: PSNR, SSIM, LPIPS, lip "
                                            "shape (--sources)", file_count="multiple", type="filepath")
                    syncnet = gr.Dropdown(jobs.syncnet_choices(), value="",
                                          label="SyncNet trained here, LSE repo (--syncnet_path)")
                    lse_syncnet = gr.Dropdown(jobs.lse_choices(), value="",
                                              label="syncnet_python's syncnet_v2.model, LSE syncnet_v2 "
                                                    "(--lse_syncnet_path)")
                    lpips_weights = gr.Radio(list(LPIPS_WEIGHTS), value="pretrained",
                                             label="LPIPS trunk (--lpips_weights)",
                                             info="pretrained: torchvision's ImageNet VGG16, downloaded once")
                    score_button = gr.Button("Score", variant="primary")
                with gr.Column():
                    table = gr.Markdown()
                    table_file = gr.File(label="The table (CSV)")

        # a value not listed goes on to the job, which refuses it naming its flag (Gradio's own refusal names none
        # and logs a traceback); set on the instances, as a subclass would make Gradio write an app.pyi
        for choice in (checkpoint, amp, length, syncnet, lse_syncnet, lpips_weights):
            choice.preprocess = lambda payload: payload if payload is None else str(payload)

        def dub(source, speech, checkpoint, amp, face, length, silence, progress=gr.Progress(track_tqdm=True)):
            return jobs.dub(source, speech, checkpoint, amp, face, length, silence, progress)

        def score(videos, sources, syncnet, lse_syncnet, lpips_weights, progress=gr.Progress(track_tqdm=True)):
            return jobs.score(videos, sources, syncnet, lse_syncnet, lpips_weights)

        def rescan():
            choices = jobs.generator_choices()
            value = choices[0][1] if choices else None
            return (gr.update(choices=choices, value=value), jobs.describe(value),
                    gr.update(choices=jobs.syncnet_choices()), gr.update(choices=jobs.lse_choices()))

        button.click(dub, [source, speech, checkpoint, amp, face, length, silence], [video, done], api_name="dub",
                     concurrency_limit=1)
        score_button.click(score, [videos, sources, syncnet, lse_syncnet, lpips_weights], [table, table_file],
                           api_name="score", concurrency_limit=1)
        checkpoint.change(jobs.describe, checkpoint, about, api_visibility="private")
        refresh.click(rescan, None, [checkpoint, about, syncnet, lse_syncnet], api_visibility="private")
    return page


def serve(jobs, opt, credentials):
    """The page and its API until Ctrl-C (a KeyboardInterrupt, which Gradio takes to close the server)."""
    try:
        import gradio as gr
    except ImportError:
        raise UserError("app.py needs gradio, which is not installed; pip install -r requirements-app.txt") from None
    gr.set_static_paths([jobs.folder])  # the results served where the jobs wrote them, not copied into Gradio's cache
    threading.Thread(target=sweep_hourly, args=(jobs,), daemon=True).start()  # a daemon: it ends with the app
    page = jobs.page = build_page(jobs, opt)
    page.queue(default_concurrency_limit=1)
    try:
        page.launch(server_name=opt.host, server_port=opt.port, auth=credentials, share=False,
                    max_file_size=opt.max_upload_mb * 1024 * 1024, allowed_paths=[jobs.folder], show_error=True,
                    prevent_thread_lock=False)
    except OSError as error:  # the port is taken, or the address is not this machine's
        raise UserError(f"--port {opt.port}: cannot listen on {opt.host}:{opt.port} ({str(error).splitlines()[0]});"
                        f" pass another --port or --host") from None


def main():
    opt = build_parser().parse_args()
    credentials = check_options(opt)
    from common.devices import choose_device
    choose_device(opt.device)  # a bad --device is said now, not at the first job
    # one folder for the jobs' results and Gradio's copies of uploads, removed when the app stops
    parent = os.environ.get("GRADIO_TEMP_DIR")
    if parent:
        os.makedirs(parent, exist_ok=True)
    folder = tempfile.mkdtemp(prefix="dinet-app-", dir=parent)
    os.environ["GRADIO_TEMP_DIR"] = os.path.join(folder, "gradio")  # read as gradio is imported
    jobs = Jobs(opt, os.path.join(folder, "jobs"))

    def stop(number, frame):  # the jobs under way end, telling their clients; a second signal waits for that
        for stopping in handled:
            signal.signal(stopping, signal.SIG_IGN)
        jobs.stopped_by = number
        jobs.told()
        interrupt(number, frame)

    try:
        os.makedirs(jobs.folder)
        with signals_handled((signal.SIGINT, signal.SIGTERM, signal.SIGHUP), stop) as handled:
            serve(jobs, opt, credentials)
    except KeyboardInterrupt:  # stopped while starting; once serving, Gradio takes it
        pass
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    run_command(main)
