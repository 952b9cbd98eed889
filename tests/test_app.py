"""app.py, the web app and HTTP API: a real `python app.py` process on a free local port, with test_inference.py's
untrained mel generator at mouth 64 found in its checkpoint folder; a person's browser (headless Chromium through
selenium) and a program (gradio_client) dub 1 s of talking_head_a.mp4 with 1.6 s of speech through it.

The browser is Debian's chromium and chromium-driver, found on PATH; where they are missing they are installed with
apt-get when this process may (root, apt-get present), else the browser test is skipped saying what to install."""
import csv
import glob
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import requests

from conftest import ROOT, refusal
from footage import SOURCES, short_clip, speech
from media.ffmpeg import probe
from test_inference import checkpoint  # noqa: F401  (fixture: an untrained mel generator at mouth 64)

gradio_client = pytest.importorskip("gradio_client", reason="pip install -r requirements-app.txt")
pytestmark = [pytest.mark.needs_shared(*SOURCES), pytest.mark.xdist_group("app")]  # one app process per run
MAX_UPLOAD_MB = 1
RUNNING = {"PROCESSING", "PROGRESS", "ITERATING"}


def free_port():
    with socket.socket() as probe_socket:
        probe_socket.bind(("127.0.0.1", 0))
        return probe_socket.getsockname()[1]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """(a 1 s face clip, 1.6 s of speech, its length, a text file named .mp4)."""
    folder = tmp_path_factory.mktemp("app_inputs")
    clip, audio, text = folder / "clip.mp4", folder / "speech.wav", folder / "notes.mp4"
    short_clip(clip, seconds=1)
    seconds = speech(audio, seconds=1.6)
    text.write_text("meeting notes, not a video\n")
    return str(clip), str(audio), seconds, str(text)


@pytest.fixture(scope="module")
def app(tmp_path_factory, checkpoint):  # noqa: F811
    """The running app: (its URL, the checkpoint it offers, its log, its process); stopped with SIGTERM afterwards."""
    folder = tmp_path_factory.mktemp("app")
    port = free_port()
    log = open(folder / "app.log", "w+")
    process = subprocess.Popen([sys.executable, "app.py", "--checkpoint_dir", os.path.dirname(checkpoint),
                                "--port", str(port), "--max_upload_mb", str(MAX_UPLOAD_MB), "--device", "cpu"],
                               cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                               env={**os.environ, "GRADIO_TEMP_DIR": str(folder / "gradio")})
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 300
    while True:
        try:
            urllib.request.urlopen(url, timeout=5)
            break
        except OSError:
            log.seek(0)
            assert process.poll() is None and time.time() < deadline, f"app.py did not start:\n{log.read()[-3000:]}"
            time.sleep(0.5)
    yield url, checkpoint, folder / "app.log", process
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    log.close()


def chromium_binaries():
    """(chromium, chromedriver) from PATH, installing Debian's packages where they are missing and this process may."""
    found = shutil.which("chromium"), shutil.which("chromedriver")
    if None in found and os.geteuid() == 0 and shutil.which("apt-get"):
        print("installing Debian's chromium and chromium-driver (apt-get) for the browser test", file=sys.stderr)
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL,
                 "env": {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}}
        subprocess.run(["apt-get", "update", "-qq"], **quiet)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium", "chromium-driver"], **quiet)
        found = shutil.which("chromium"), shutil.which("chromedriver")
    if None in found:
        pytest.skip("the browser test needs Chromium: apt-get install chromium chromium-driver (Debian's packages)")
    return found


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    chromium, chromedriver = chromium_binaries()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1280,1000", "--autoplay-policy=no-user-gesture-required"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    yield driver
    driver.quit()


def upload_and_dub(driver, face, speech_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    WebDriverWait(driver, 120).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#speech input[type=file]"))
    for element, path in (("#source", face), ("#speech", speech_path)):
        driver.find_element(By.CSS_SELECTOR, f"{element} input[type=file]").send_keys(path)
        # the upload is shown (and done) before the button is pressed
        WebDriverWait(driver, 60).until(lambda d: os.path.basename(path) in d.find_element(
            By.CSS_SELECTOR, element).text.replace("\n", ""))  # the page breaks the name before its extension
    driver.find_element(By.CSS_SELECTOR, "#dub").click()


def test_a_person_dubs_in_the_browser_and_a_bad_upload_shows_the_one_line_error(app, inputs, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    url = app[0]
    clip, audio, seconds, text = inputs
    browser.get(url)
    WebDriverWait(browser, 120).until(lambda d: "mouth 64 (read from the checkpoint)" in
                                      d.find_element(By.CSS_SELECTOR, "#about").text)
    upload_and_dub(browser, text, audio)
    errors = WebDriverWait(browser, 300, 0.2).until(lambda d: [e.text for e in d.find_elements(
        By.CSS_SELECTOR, ".toast-body.error [data-testid=toast-text]") if e.text])
    assert len(errors) == 1 and "\n" not in errors[0]
    assert errors[0].startswith("--source_video_path notes.mp4: not a readable video ("), errors
    time.sleep(12)  # Gradio's toasts close after 10 s by default; this one stays until closed
    shown = browser.find_elements(By.CSS_SELECTOR, ".toast-body.error [data-testid=toast-text]")
    assert [e.text for e in shown] == errors

    browser.refresh()
    upload_and_dub(browser, clip, audio)
    video = WebDriverWait(browser, 600, 0.5).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#result video"))[0]
    state = WebDriverWait(browser, 60).until(lambda d: d.execute_script(
        "const v = arguments[0]; v.muted = true; if (v.paused) v.play(); "
        "return v.readyState >= 2 && v.currentTime > 0 && [v.duration, v.videoWidth, v.videoHeight];", video))
    duration, width, height = state
    assert abs(duration - seconds) < 0.1 and (width, height) == (360, 640)
    assert "40 frames at 25 fps, mouth 64: 40 dubbed" in browser.find_element(By.CSS_SELECTOR, "#done").text
    browser.execute_script("arguments[0].pause(); arguments[0].currentTime = 0.5; window.scrollTo(0, 0);", video)
    time.sleep(1)
    browser.save_screenshot(str(tmp_path / "app_dubbed.png"))
    assert os.path.getsize(tmp_path / "app_dubbed.png") > 10_000


def test_the_dub_endpoint_runs_one_job_at_a_time_and_returns_the_video(app, inputs, tmp_path):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError
    url, checkpoint_path, log, _ = app
    clip, audio, seconds, text = inputs
    client = Client(url, verbose=False, download_files=str(tmp_path))  # the results land in the test's folder
    options = (checkpoint_path, "off", "largest", "pingpong", False)
    dubbing = client.submit(handle_file(clip), handle_file(audio), *options, api_name="/dub")
    deadline = time.time() + 300
    while dubbing.status().code.name not in RUNNING:
        assert time.time() < deadline and not dubbing.done()
        time.sleep(0.05)
    refused = client.submit(handle_file(text), handle_file(audio), *options, api_name="/dub")  # refused at once, but
    video, summary = dubbing.result()
    with pytest.raises(AppError) as error:
        refused.result()
    # the server's log, in the order it ran them (the client's threads may learn of the two ends in either order):
    # the refusal, a second's work, started after the dub ended, never beside it
    events = [re.fullmatch(r"\S+ \S+ dub job (\d+): (\w+).*", line) for line in log.read_text().splitlines()]
    events = [(int(event[1]), event[2]) for event in events if event]
    first = events[-4][0]
    assert events[-4:] == [(first, "started"), (first, "done"), (first + 1, "started"), (first + 1, "refused")], events
    info = probe(video)
    assert info["has_audio"] and abs(info["duration"] - seconds) < 0.1
    stored = glob.glob(str(log.parent / "gradio" / "**" / os.path.basename(video)), recursive=True)
    assert len(stored) == len(re.findall(r" dub job \d+: done", log.read_text()))  # each result kept once on disk
    assert summary.startswith("40 frames at 25 fps, mouth 64: 40 dubbed")
    assert summary.endswith("\n\nNote: the video (1.00 s) is shorter than the speech (1.60 s): played forwards and "
                            "backwards to last as long (--length pingpong; --length cut ends both with the video)")
    assert str(error.value).startswith("--source_video_path notes.mp4: not a readable video (")
    big = tmp_path / "long.wav"
    big.write_bytes(b"\0" * (MAX_UPLOAD_MB * 1024 * 1024 + 1))
    with pytest.raises(ValueError, match="exceeds the maximum file size of 1048576 bytes"):  # said by the client
        client.predict(handle_file(clip), handle_file(str(big)), *options, api_name="/dub")
    with open(big, "rb") as file:  # and by the server, to any other client
        upload = requests.post(f"{url}gradio_api/upload", files={"files": file}, timeout=60)
    assert (upload.status_code, upload.text) == (413, "File size exceeded maximum allowed size of 1048576 bytes.")


def test_the_score_endpoint_scores_a_video_against_its_source_as_the_protocol_does(app, inputs, tmp_path):
    """A video scored against itself: the protocol's face-crop columns, perfect, in the table and its CSV."""
    from gradio_client import Client, handle_file
    url = app[0]
    clip = inputs[0]
    client = Client(url, verbose=False, download_files=str(tmp_path))
    table, table_file = client.predict([handle_file(clip)], [handle_file(clip)], None, None, "random",
                                       api_name="/score")
    with open(table_file) as f:
        row = next(csv.DictReader(f))
    assert row["video"] == "clip.mp4" and int(row["frames"]) == 25 and "| PSNR mouth |" in table
    assert float(row["PSNR face"]) > 90 and float(row["LPIPS mouth"]) < 1e-3 and float(row["mouth_open_corr"]) > 0.99


def test_a_value_not_offered_is_refused_in_one_line_naming_its_flag(app, inputs, tmp_path):
    """Through the API, where a form's lists do not bind: a checkpoint written since the app started is taken, one
    outside its folder is not."""
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError
    url, checkpoint_path, log, _ = app
    clip, audio, _, text = inputs
    client = Client(url, verbose=False)
    later, outside = os.path.join(os.path.dirname(checkpoint_path), "later.pth"), str(tmp_path / "outside.pth")
    for copy in (later, outside):
        shutil.copy(checkpoint_path, copy)
    try:
        refusals = {(text, later, "off", "pingpong"): "--source_video_path notes.mp4: not a readable video (",
                    (clip, outside, "off", "pingpong"): f"--pretrained_clip_DINet_path {outside}: not a file this "
                                                        f"app offers; pass one the page lists",
                    (clip, later, "fp8", "pingpong"): "argument --amp: invalid choice: 'fp8' (choose from",
                    (clip, later, "off", "bogus"): "argument --length: invalid choice: 'bogus' (choose from"}
        for (face, checkpoint_file, amp, length), message in refusals.items():
            with pytest.raises(AppError) as error:
                client.predict(handle_file(face), handle_file(audio), checkpoint_file, amp, "largest", length, False,
                               api_name="/dub")
            assert str(error.value).startswith(message)
    finally:
        os.remove(later)
    with pytest.raises(AppError) as error:
        client.predict([handle_file(clip)], [handle_file(clip)], None, None, "/etc/passwd", api_name="/score")
    assert str(error.value) == "--lpips_weights /etc/passwd: pass pretrained or random"
    assert "Traceback" not in log.read_text()
    assert re.search(r" score job \d+: refused: --lpips_weights /etc/passwd: pass pretrained or random\n",
                     log.read_text())


def test_uploads_are_judged_by_what_ffmpeg_reads_in_them_not_by_their_names(app, inputs, tmp_path):
    """A camcorder's .mts is a video; speech given as the face, or a text file as the speech, is refused naming
    the field's flag (and the log gets no traceback)."""
    import imageio_ffmpeg
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError
    url, checkpoint_path, log, _ = app
    clip, audio, _, _ = inputs
    camcorder, notes = str(tmp_path / "clip.mts"), tmp_path / "notes.txt"
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", clip, "-c", "copy", "-f", "mpegts",
                    camcorder], check=True)
    notes.write_text("meeting notes\n")
    client = Client(url, verbose=False)
    for face, speech_file, message in ((camcorder, str(notes), "--driving_audio_path notes.txt: not a readable audio "
                                                                "file ("),
                                       (audio, audio, "--source_video_path speech.wav: no video stream; pass a video "
                                                      "of the face to dub")):
        with pytest.raises(AppError) as error:
            client.predict(handle_file(face), handle_file(speech_file), checkpoint_path, "off", "largest", "pingpong",
                           False, api_name="/dub")
        assert str(error.value).startswith(message)
    assert "Traceback" not in log.read_text()


@pytest.mark.parametrize("argv,message", [
    (["--host", "0.0.0.0"], "--host 0.0.0.0: listening beyond this machine needs --auth USER:PASS"),
    (["--host", "0.0.0.0", "--auth", "admin"], "--auth admin: pass USER:PASS"),
    (["--host", "example.invalid", "--auth", "admin:secret"], "--host example.invalid: the name does not resolve ("),
    (["--host", "::1"], "--host ::1: an IPv6 address, which Gradio's server cannot take; pass 127.0.0.1"),
])
def test_a_host_needing_a_login_or_that_gradio_cannot_serve_is_refused_at_once(argv, message, monkeypatch, capsys):
    assert refusal("app.py", argv, monkeypatch, capsys).startswith(message)


@pytest.mark.parametrize("face", ["0", "-h"])
def test_a_bad_face_is_named_once(face, tmp_path, monkeypatch):
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    import gradio as gr

    import app as web_app
    jobs = web_app.Jobs(web_app.build_parser().parse_args([]), str(tmp_path))
    with pytest.raises(gr.Error) as error:  # the flags are read before the files
        jobs.dub("clip.mp4", "speech.wav", "netG_best.pth", "off", face, "pingpong", False)
    assert error.value.message == (f"argument --face: '{face}': use largest, N (the N-th face from the left, from 1) "
                                   f"or x,y (pixels)")


def test_job_folders_are_deleted_a_day_after_but_not_while_their_job_runs(tmp_path):
    import app as web_app
    (tmp_path / "old" / "sub").mkdir(parents=True)
    (tmp_path / "new").mkdir()
    (tmp_path / "old" / "sub" / "dubbed.mp4").write_bytes(b"video")
    os.utime(tmp_path / "old", (time.time() - 86400 - 60,) * 2)
    web_app.sweep(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["new"]
    jobs = web_app.Jobs(web_app.build_parser().parse_args([]), str(tmp_path))
    with jobs.job("dub") as folder:  # a job under way for over a day
        web_app.sweep(str(tmp_path), now=time.time() + 86400 + 60, running=set(jobs.running))
        assert os.listdir(tmp_path) == [os.path.basename(folder)]
    web_app.sweep(str(tmp_path), now=time.time() + 86400 + 60, running=set(jobs.running))
    assert os.listdir(tmp_path) == []  # done: its folder goes with the rest


def test_a_pipe_named_as_a_checkpoint_is_neither_listed_nor_read(tmp_path):
    """A named pipe (or a device's link) under --checkpoint_dir: reading it would hang the app's start and Refresh."""
    import threading

    import app as web_app
    for name in ("stuck.pth", "stuck.model"):
        os.mkfifo(tmp_path / name)
    found = []
    scan = threading.Thread(target=lambda: found.append((web_app.checkpoints_in(str(tmp_path)),
                                                         web_app.checkpoints_in(str(tmp_path), None, ".model"))),
                            daemon=True)  # left behind, blocked, where the pipe is read
    scan.start()
    scan.join(10)
    assert found == [([], [])]


def test_a_folder_without_generators_shows_how_to_make_one(tmp_path, checkpoint, monkeypatch):  # noqa: F811
    """The SyncNet and the file that would run code are never offered (nor unpickled); the page says what to run."""
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))  # where gradio keeps its files from its import on
    import app as web_app
    from models.checkpoint import atomic_save
    from models.syncnet import SyncNetConfig, build_syncnet
    atomic_save({"state_dict": {"net": build_syncnet(SyncNetConfig()).state_dict()}}, str(tmp_path / "syncnet.pth"))
    (tmp_path / "netG_evil.pth").write_bytes(b"net_g" * 100)
    opt = web_app.build_parser().parse_args(["--checkpoint_dir", str(tmp_path)])
    jobs = web_app.Jobs(opt, str(tmp_path))
    assert jobs.generator_choices() == []
    page = web_app.build_page(jobs, opt)
    about = next(block for block in page.blocks.values()
                 if getattr(block, "elem_id", None) == "about")
    assert about.value.startswith(f"no generator checkpoint under {tmp_path}; make one with `python demo.py`")
    flags = {match for block in page.blocks.values() for match in re.findall(r"\((--\w+)\)$", getattr(block, "label",
                                                                                                   None) or "")}
    assert flags == {"--source_video_path", "--driving_audio_path", "--pretrained_clip_DINet_path", "--amp", "--face",
                     "--length", "--close_on_silence", "--videos", "--sources", "--syncnet_path", "--lse_syncnet_path",
                     "--lpips_weights"}  # every field names its flag: the errors name them
    (tmp_path / "run").mkdir()
    shutil.copy(checkpoint, tmp_path / "run" / "netG_best.pth")  # found in a folder below
    assert [path for _, path in jobs.generator_choices()] == [str(tmp_path / "run" / "netG_best.pth")]


def test_a_checkpoint_deleted_while_the_app_runs_is_unlisted_and_refused(tmp_path, checkpoint, inputs,  # noqa: F811
                                                                        monkeypatch):
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    import gradio as gr

    import app as web_app
    from common.errors import UserError
    (tmp_path / "notes.pth").write_text("not a checkpoint\n")  # and --checkpoint must hold a generator to start
    with pytest.raises(UserError, match=r"--checkpoint \S+notes.pth: holds no generator \(net_g\); pass a generator"):
        web_app.check_options(web_app.build_parser().parse_args(["--checkpoint", str(tmp_path / "notes.pth")]))
    (tmp_path / "found").mkdir()
    found, given = str(tmp_path / "found" / "netG_best.pth"), str(tmp_path / "given.pth")
    shutil.copy(checkpoint, found)
    shutil.copy(checkpoint, given)
    opt = web_app.build_parser().parse_args(["--checkpoint", given, "--checkpoint_dir", str(tmp_path / "found")])
    jobs = web_app.Jobs(opt, str(tmp_path))
    assert [path for _, path in jobs.generator_choices()] == [given, found]
    os.remove(given)
    assert [path for _, path in jobs.generator_choices()] == [found]  # Refresh: the list without it
    clip, audio, _, _ = inputs
    with pytest.raises(gr.Error) as error:
        jobs.dub(clip, audio, given, "off", "largest", "pingpong", False)
    assert error.value.message == (f"--pretrained_clip_DINet_path {given}: no such file (deleted since the list was "
                                   f"made); press Refresh")


def test_stopping_the_app_mid_dub_tells_the_client_and_leaves_none_of_its_files(app, inputs):
    """Last of the tests with the app, as it stops it: SIGTERM (a service manager's stop) while a dub runs."""
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError
    url, checkpoint_path, log, process = app
    clip, audio, _, _ = inputs
    jobs = len(re.findall(r" job \d+: started", log.read_text()))  # dub and score jobs share the numbers
    dubbing = Client(url, verbose=False).submit(handle_file(clip), handle_file(audio), checkpoint_path, "off",
                                                "largest", "pingpong", False, api_name="/dub")
    deadline = time.time() + 120
    while f" dub job {jobs + 1}: started" not in log.read_text():
        assert time.time() < deadline and not dubbing.done(), log.read_text()[-3000:]
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    with pytest.raises(AppError) as error:
        dubbing.result()
    assert str(error.value) == ("the app stopped (SIGTERM) before this dub job finished; send it again once the app "
                                "is back")
    assert process.wait(timeout=60) == 0
    assert f" dub job {jobs + 1}: stopped by SIGTERM\n" in log.read_text() and "Traceback" not in log.read_text()
    assert os.listdir(log.parent / "gradio") == []  # uploads, results and Gradio's copies of them
