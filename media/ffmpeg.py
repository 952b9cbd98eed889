"""The one way this repository runs ffmpeg (the binary imageio-ffmpeg ships, so nothing else to install).

`FFmpeg` starts it with its pipes widened, its messages kept and (on Linux) killed when the thread that started it
ends, so a killed run leaves no ffmpeg running; it turns a failure into one UserError line: ffmpeg's reason, naming
the input, or a full disk or a folder that cannot be written, naming the output. The decoder, the encoder and the
conversions of data preparation (media/decoder.py, media/encoder.py, media/convert.py) all run ffmpeg through it;
`probe` reads what a media file holds.
"""
import ctypes
import errno
import functools
import os
import re
import signal
import subprocess
import tempfile

import imageio_ffmpeg

from common.errors import UserError, permission_denied
from common.files import DISK_FULL, not_written

PIPE_BYTES = 1 << 20  # Linux's default pipe-max-size for unprivileged processes
FULL_DISK_MESSAGES = ("No space left", "File too large", "quota exceeded")
FULL_DISK_STATUSES = {256 - code: code for code in DISK_FULL}  # ffmpeg exits with AVERROR(errno), -errno, mod 256
PR_SET_PDEATHSIG = 1  # prctl's option: a signal the kernel sends a process when the thread that started it ends
try:
    _prctl = ctypes.CDLL(None).prctl  # Linux's; looked up here, as the child may run no more than the call
except (OSError, AttributeError, TypeError):  # no such call (macOS), no C library by that name (Windows)
    _prctl = None


def _ended_with_its_starter():
    """Run in ffmpeg's process before it starts (Linux): SIGKILL when the thread that started it ends, as when its
    run is killed (SIGKILL, the out-of-memory killer), which leaves no cleanup to stop it."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def widen_pipe(pipe):
    """Give a pipe to or from ffmpeg a 1 MB buffer instead of Linux's 64 KB, so a large frame crosses it in a few
    reads or writes, each a wake-up of the process on the other side. A no-op where the system does not allow it
    (not Linux, or a lower pipe-max-size)."""
    try:
        import fcntl
        fcntl.fcntl(pipe.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031), PIPE_BYTES)
    except (ImportError, OSError):
        pass


class FFmpeg:
    """ffmpeg running `arguments` on `path` (its input, named in errors); leaving the `with` block stops it.

    `output`: the file or folder it writes, named when writing fails (None: it decodes to stdout). `stdin` and
    `stdout`: pipes for raw frames in and out. Its messages go to a temporary file, not a pipe: a full stderr
    pipe would stall it."""

    def __init__(self, arguments, path, output=None, stdin=False, stdout=False, loglevel="error"):
        self.path, self.output = path, output
        self._log = tempfile.TemporaryFile()
        command = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-hide_banner", "-loglevel", loglevel,
                   *read_as_given(arguments)]
        try:
            self.process = subprocess.Popen(command, stdin=subprocess.PIPE if stdin else None,
                                            stdout=subprocess.PIPE if stdout else subprocess.DEVNULL,
                                            stderr=self._log, bufsize=0,
                                            preexec_fn=_ended_with_its_starter if _prctl else None)
        except BaseException:
            self._log.close()
            raise
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                widen_pipe(pipe)

    def write(self, data):
        """Write all of `data` (a contiguous array or bytes) to ffmpeg's stdin; BrokenPipeError when it stopped."""
        view = memoryview(data).cast("B")
        while view:
            view = view[self.process.stdin.write(view):]

    def read_into(self, buffer):
        """Fill `buffer` (a writable bytes memoryview) from ffmpeg's stdout; False at the end of the stream (a
        partial last frame is never counted)."""
        filled = 0
        while filled < len(buffer):
            count = self.process.stdout.readinto(buffer[filled:])
            if not count:
                return False
            filled += count
        return True

    def wait(self):
        """ffmpeg's exit status once it ends (its stdin closed first, so it sees the end of its input)."""
        if self.process.stdin is not None and not self.process.stdin.closed:
            try:
                self.process.stdin.close()
            except BrokenPipeError:
                pass
        return self.process.wait()

    def stop(self):
        """Kill ffmpeg if it still runs (its caller stopped early, or failed); its exit status."""
        if self.process.poll() is None:
            self.process.kill()
        return self.wait()

    def messages(self):
        self._log.seek(0)
        return self._log.read().decode(errors="replace").strip().splitlines()

    def failure(self, reason=None):
        """The UserError for how the ended ffmpeg failed: a full disk or an output folder that cannot be written,
        naming the output (the earlier one is intact: outputs are written under another name), else ffmpeg's last
        message, or `reason`."""
        returncode, messages = self.process.returncode, self.messages()
        code = self._full_disk_errno()
        last = messages[-1] if messages else os.strerror(code) if code else reason or f"exit code {returncode}"
        if self.output is None:
            return UserError(f"{self.path}: ffmpeg could not decode it ({last}); re-encode it with ffmpeg")
        if self.filled_disk():
            return not_written(self.output, last)
        not_writable = [os.strerror(code) for code in (errno.EACCES, errno.EPERM, errno.EROFS)]
        if any("output" in line and text in line for line in messages for text in not_writable):
            return not_written(self.output, last, full_disk=False)
        return UserError(f"{self.path}: ffmpeg failed ({last})")

    def _full_disk_errno(self):
        """The errno of the full disk (or file-size limit) the ended ffmpeg's exit status tells, else None: its
        messages go to the temporary folder, which may be the full one."""
        # SIGXFSZ: killed for writing past the file-size limit, which is what a full disk looks like under one
        return errno.EFBIG if self.process.returncode == -signal.SIGXFSZ else FULL_DISK_STATUSES.get(
            self.process.returncode)

    def filled_disk(self):
        """Whether the ended ffmpeg stopped for a full disk (or a file-size limit), as its messages or its end say."""
        return bool(self._full_disk_errno()) or any(text in line for line in self.messages()
                                                    for text in FULL_DISK_MESSAGES)

    def finish(self):
        """Wait for ffmpeg to end; raise its failure unless it succeeded."""
        if self.wait() != 0:
            raise self.failure()

    def close(self):
        self.stop()
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exception):
        self.close()


# demuxers that open further files or URLs a file names (playlists, scripts, SDP stream descriptions): a downloaded
# "video" of a few lines would have ffmpeg read any local file, or fetch from the network, as if it were its content
NAMING_OTHER_FILES = {"concat", "hls", "dash", "imf", "sdp", "rtp", "rtsp", "sap", "avisynth", "vapoursynth",
                      "webm_dash_manifest"}
NOT_READ = "not on whitelist"  # ffmpeg's message for an input read_as_given refuses


@functools.cache
def self_contained_demuxers():
    """The names of this ffmpeg's demuxers (`ffmpeg -demuxers`) but devices and those in NAMING_OTHER_FILES."""
    with FFmpeg(["-demuxers"], "ffmpeg -demuxers", stdout=True) as ffmpeg:
        lines = ffmpeg.process.stdout.read().decode(errors="replace").splitlines()
        ffmpeg.wait()
    table = lines[next(i for i, line in enumerate(lines) if line.strip() == "---") + 1:]  # after the legend
    # " D   mov,mp4,m4a,3gp,3g2,mj2 QuickTime / MOV": its flags, then its names; "d" marks a device (a camera, lavfi)
    listed = [line[4:].split()[0] for line in table if line[1:4].strip() == "D"]
    return ",".join(name for name in listed if not NAMING_OTHER_FILES & set(name.split(",")))


def read_as_given(arguments):
    """`arguments` with each input file whose format ffmpeg is to find (`-i PATH` with no `-f` before it: a file, not
    our pipe of raw frames or a lavfi graph) read as the file it is and no other: through the file protocol alone, by
    a demuxer that opens nothing the file names; a name that begins as a URL does ("concat:a|b.mp4") is the file's."""
    safe, forced = [], False
    for argument in arguments:
        if safe[-1:] == ["-i"]:
            if not forced and re.match(r"[\w+.-]+:", argument):
                argument = f"file:{argument}"
            forced = False
        elif argument == "-i" and not forced:
            safe += ["-protocol_whitelist", "file", "-format_whitelist", self_contained_demuxers()]
        elif argument == "-f":  # before an input, its format; after the last, the output's, which changes nothing
            forced = True
        safe.append(argument)
    return safe


@functools.cache
def hardware_decoders():
    """The hardware decoding methods this ffmpeg was built with (`ffmpeg -hwaccels`: cuda, vaapi, ...); whether one
    works on this machine only decoding with it tells."""
    with FFmpeg(["-hwaccels"], "ffmpeg -hwaccels", stdout=True) as ffmpeg:
        listed = ffmpeg.process.stdout.read().decode(errors="replace").split()  # "Hardware acceleration methods:" ...
        return frozenset(listed[3:]) if ffmpeg.wait() == 0 else frozenset()


def no_cuda_decoder():
    """Why this ffmpeg cannot decode with the GPU's decoder, where it was built without one; None where it has one."""
    if "cuda" in hardware_decoders():
        return None
    return (f"{imageio_ffmpeg.get_ffmpeg_exe()} lists no CUDA decoder (ffmpeg -hwaccels): imageio-ffmpeg 0.8 or newer "
            "ships an ffmpeg with one")


def cuda_decoding(device_index):
    """ffmpeg's input options that decode on CUDA device `device_index`'s hardware decoder (NVDEC), the frames copied
    back to memory for the filters and the output."""
    return ["-hwaccel", "cuda", "-hwaccel_device", str(device_index)]


def run(arguments, path, output):
    """Run ffmpeg to its end, reading `path` and writing `output`; a failure raises its UserError."""
    with FFmpeg(arguments, path, output) as ffmpeg:
        ffmpeg.finish()


# pixels this near square are taken as square: ffmpeg's `scale=-2:720` rounds the width to even and labels the pixels
# by the rounding (SAR 405:406), a squeeze no face crop or viewer can tell
SQUARE_TOLERANCE = 0.01
SIZE = r", (\d+)x(\d+)\b"  # in ffmpeg's line of a video stream: "..., yuv420p(progressive), 256x256 [SAR 1:1 ...], ..."


def _decoded_video_line(path):
    """ffmpeg's line of the video stream that decoding `path`'s first picture gives ("" if none)."""
    with FFmpeg(["-i", path, "-frames:v", "1", "-f", "null", "-"], path, loglevel="info") as ffmpeg:
        ffmpeg.wait()
        lines = ffmpeg.messages()
    output = next((i for i, line in enumerate(lines) if line.startswith("Output #0")), len(lines))
    return next((line for line in lines[output:] if "Video:" in line), "")


def probe(video_path, kind="video"):
    """What a media file holds: {"width", "height", "fps", "duration", "still", "has_video", "has_audio", "rotation",
    "colour", "pixel_format", "square_pixels", "sar", "video_stream"}; colour is (matrix, primaries, transfer) as
    ffmpeg names them, None where the file does not say; pixel_format is ffmpeg's name of the video's ("yuv420p",
    "gbrp", "rgb24", ...), None without video; video_stream ("0:1") names the stream the others describe.

    Parsed from `ffmpeg -i` (imageio-ffmpeg ships no ffprobe), and for a photograph from its first picture decoded;
    width/height/fps are None without video.
    `kind` names what the file should be in the message for one ffmpeg cannot read ("video", "audio file").
    """
    if not os.path.isfile(video_path):
        raise UserError(f"{video_path}: file not found; check the path")
    if not os.access(video_path, os.R_OK):  # ffmpeg would call it unreadable, as if the file were at fault
        raise permission_denied(video_path)
    with FFmpeg(["-i", video_path], video_path, loglevel="info") as ffmpeg:
        ffmpeg.wait()  # it prints the streams and exits 1 for want of an output file
        info = "\n".join(ffmpeg.messages())
    # of several video streams, the one ffmpeg would pick, the largest (cover art aside); decoders map it by name
    videos = [line for line in info.splitlines()  # stream lines only: a warning may quote one ("... (Video: ...")
              if line.lstrip().startswith("Stream #") and "Video:" in line and "(attached pic)" not in line]
    video_line = max(videos, key=_area, default="")
    size = re.search(SIZE, video_line)
    lines = info.strip().splitlines() or ["no streams"]
    complaint = None
    if NOT_READ in info:
        raise UserError(f"{video_path}: a playlist naming other files or URLs for ffmpeg to read (as concat, HLS and "
                        f"DASH files do), which is refused; pass the {kind} itself")
    if "Stream #" not in info:
        complaint = lines[-1].replace(f"{video_path}: ", "")  # ffmpeg repeats the path
    elif video_line and not size and "Audio:" not in info:  # a picture it cannot decode: a text file named .jpg
        complaint = next((re.sub(r"^\[[^]]*\] ", "", line) for line in lines if line.startswith("[")), lines[-1])
    elif kind == "video" and re.search(r"Video: [^,]*, none\b", video_line):  # no picture format: none decoded
        complaint = "no picture of its video stream could be decoded: a partial or damaged file?"
    if complaint:
        raise UserError(f"{video_path}: not a readable {kind} ({complaint}); re-encode it with ffmpeg")
    # a photograph's EXIF orientation is applied by the decoder, so only a decoded picture tells its size
    photograph = size and re.search(r"^Input #0, (image2|\w+_pipe),", info, re.MULTILINE)
    if photograph:
        size = re.search(SIZE, _decoded_video_line(video_path)) or size
    pixel_format = re.search(r"Video: [^,]*, (\w+)", video_line)
    fps = re.search(r"([\d.]+) fps", video_line)
    duration = re.search(r"Duration: (\d+):(\d+):([\d.]+)", info)
    # Phone videos store portrait as landscape plus a rotation that ffmpeg applies when decoding.
    rotation = re.search(r"rotation of (-?[\d.]+) degrees|rotate\s*:\s*(-?\d+)", info)
    rotation = int(round(float(rotation.group(1) or rotation.group(2)))) % 360 if rotation else 0
    width, height = (int(size.group(1)), int(size.group(2))) if size else (None, None)
    # "yuv420p(tv, bt709, progressive)" or "yuv420p(tv, bt470bg/bt470bg/smpte170m)": one name, or the three
    colour = re.search(r"\((?:tv, |pc, )?((?:bt|smpte|fcc|ycgco|gbr|unknown)[\w-]*)(?:/([\w-]+)/([\w-]+))?[,)]", video_line)
    colour = (colour.group(1), colour.group(2) or colour.group(1), colour.group(3) or colour.group(1)) if colour else ()
    colour = tuple(None if name in (None, "unknown", "reserved") else name for name in colour) or (None, None, None)
    if rotation in (90, 270) and not photograph:
        width, height = height, width
    # anamorphic video shows its pixels wider or narrower: "[SAR 2:1 DAR ...]" from the codec, and after it
    # ", SAR 2:1 DAR ..." from the container where that says otherwise (or the codec has none: VP8, VP9), which wins
    sar = ([None] + re.findall(r"SAR (\d+):(\d+) DAR", video_line))[-1]
    square = not sar or "0" in sar or abs(int(sar[0]) / int(sar[1]) - 1) <= SQUARE_TOLERANCE
    return {
        "width": width,  # as decoded: after a video's rotation or a photograph's EXIF orientation
        "height": height,
        "fps": float(fps.group(1)) if fps else None,
        "duration": (int(duration.group(1)) * 3600 + int(duration.group(2)) * 60 + float(duration.group(3))
                     if duration else None),
        "still": bool(photograph),  # one picture (jpg, png, webp, ...)
        "has_video": size is not None,  # a video stream ffmpeg cannot tell the size of is one it cannot decode
        "has_audio": "Audio:" in info,
        "rotation": rotation,
        "colour": colour,
        "pixel_format": pixel_format.group(1) if pixel_format else None,
        "square_pixels": square,  # False: a pixel is shown SAR wide by 1 high ("sar", as "a:b")
        "sar": ":".join(sar) if sar else "1:1",
        "video_stream": re.search(r"Stream #(\d+:\d+)", video_line).group(1) if video_line else None,  # "0:1"
    }


def video_seconds(path):
    """Seconds from the file's start to the end of its first video stream's last frame, read from its packets
    without decoding: the file's duration, which probe gives, is its longest stream's, and sound may outlast the
    picture."""
    with FFmpeg(["-i", path, "-map", "0:v:0", "-c", "copy", "-f", "framecrc", "-"], path, stdout=True) as ffmpeg:
        lines = ffmpeg.process.stdout.read().decode(errors="replace").splitlines()
        if ffmpeg.wait() != 0:
            raise ffmpeg.failure()
    # "#tb 0: 1/12800" gives the time base; each packet's line is "stream, dts, pts, duration, size, checksum"
    numerator, denominator = next(line.split(":")[1] for line in lines if line.startswith("#tb 0:")).split("/")
    ends = [int(pts) + int(length) for _, _, pts, length, *_ in
            (line.split(",") for line in lines if line and not line.startswith("#"))]
    return max(ends, default=0) * int(numerator) / int(denominator)


def squeezed(path, info):
    """Why the video of `path`, whose probe `info` says its pixels are not square, cannot be cropped as it is."""
    return (f"{path}: its pixels are not square (SAR {info['sar']}), so its faces would be found and cropped squeezed; "
            f"make them square first: ffmpeg -i {path} -vf scale=iw*sar:ih,setsar=1 square.mp4")


def _area(video_line):
    size = re.search(SIZE, video_line)
    return int(size.group(1)) * int(size.group(2)) if size else 0
