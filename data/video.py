"""Video and audio files through ffmpeg (the binary that imageio-ffmpeg ships, so nothing else to install).

`write_video` encodes RGB frames (plus an optional audio track) as H.264/AAC mp4; `read_video_frames`
decodes any video ffmpeg reads (HEVC included) to RGB arrays; `extract_audio` and `extract_frames` write
audio and frames for data preparation, `resample_video` re-encodes any input as a 25 fps H.264/AAC mp4;
`probe` reads what a file holds. Every output is written under a hidden temporary name in its destination
directory and renamed into place when complete (`atomic_output`), so an interrupted run never leaves a
truncated file that looks finished.
"""
import errno
import itertools
import os
import re
import signal
import subprocess
import tempfile

import imageio_ffmpeg
import numpy as np

from common.errors import UserError
from common.files import atomic_output, not_written


def _run_ffmpeg(arguments, path, stdin_frames=None, output=None):
    """Run ffmpeg with `arguments`; raise UserError naming `path` with ffmpeg's last error line if it fails
    (`output`, the file it writes, when the disk is full or its folder cannot be written).

    stdin_frames: an iterator of uint8 arrays piped to ffmpeg's stdin (raw video input), or None.
    """
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-hide_banner", "-loglevel", "error", *arguments]
    # stderr goes to a file, not a pipe: a pipe that fills up while we write frames would deadlock.
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(command, stdin=subprocess.PIPE if stdin_frames is not None else None,
                                   stdout=subprocess.DEVNULL, stderr=log)
        if stdin_frames is not None:
            widen_pipe(process.stdin)
            try:
                for frame in stdin_frames:
                    process.stdin.write(np.ascontiguousarray(frame, dtype=np.uint8).tobytes())
            except BrokenPipeError:
                pass  # ffmpeg stopped early; its log says why
            finally:
                process.stdin.close()
        returncode = process.wait()
        log.seek(0)
        messages = log.read().decode(errors="replace").strip().splitlines()
    if returncode != 0:
        raise ffmpeg_failure(path, returncode, messages, output=output)


PIPE_BYTES = 1 << 20  # Linux's default pipe-max-size for unprivileged processes


def widen_pipe(pipe):
    """Give a pipe to or from ffmpeg a 1 MB buffer instead of Linux's 64 KB, so a 1080p frame (3 MB in 4:2:0)
    crosses it in 3 reads or writes, not 48, each a wake-up of the process on the other side (a 250-frame
    1080x1920 dubbing run: 76 K context switches -> 28 K). A no-op where the system does not allow it (not
    Linux, or a lower pipe-max-size)."""
    try:
        import fcntl
        fcntl.fcntl(pipe.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031), PIPE_BYTES)
    except (ImportError, OSError):
        pass


def ffmpeg_failure(path, returncode, messages, reason=None, output=None):
    """The UserError for an ffmpeg that failed on `path`: a full disk or an output folder that cannot be written
    said as such, naming `output` (default `path`, the file it was writing; the earlier one is intact, since outputs
    are written under another name), else ffmpeg's last error line, or `reason`."""
    # SIGXFSZ: killed for writing past the file-size limit, which is what a full disk looks like under one
    killed_by_limit = returncode == -signal.SIGXFSZ
    last = messages[-1] if messages else os.strerror(errno.EFBIG) if killed_by_limit else (
        reason or f"exit code {returncode}")
    full_disk = ("No space left", "File too large", "quota exceeded")
    if killed_by_limit or any(text in line for line in messages for text in full_disk):
        return not_written(output or path, last)
    not_writable = [os.strerror(code) for code in (errno.EACCES, errno.EPERM, errno.EROFS)]
    if any("output" in line and text in line for line in messages for text in not_writable):
        return not_written(output or path, last, full_disk=False)
    return UserError(f"{path}: ffmpeg failed ({last})")


def write_video(path, frames, fps=25, audio_path=None):
    """Encode an iterable of (H, W, 3) uint8 RGB frames as H.264 (yuv420p) mp4, with `audio_path` as AAC."""
    frames = iter(frames)
    first = next(frames, None)
    if first is None:
        raise ValueError(f"{path}: no frames to write")
    height, width = first.shape[:2]
    inputs = ["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", str(fps), "-i", "-"]
    streams = ["-map", "0:v"]
    if audio_path is not None:
        inputs += ["-i", audio_path]
        streams += ["-map", "1:a", "-c:a", "aac", "-b:a", "128k"]
    # yuv420p needs even sizes: pad odd ones by a pixel on the right/bottom, which moves no landmark.
    video_codec = ["-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", "18"]
    with atomic_output(path) as partial:
        _run_ffmpeg([*inputs, *streams, *video_codec, "-movflags", "+faststart", partial], path,
                    stdin_frames=itertools.chain([first], frames))


def probe(video_path, kind="video"):
    """What a media file holds: {"width", "height", "fps", "duration", "has_video", "has_audio", "rotation",
    "colour", "pixel_format"}; colour is (matrix, primaries, transfer) as ffmpeg names them, None where the file
    does not say; pixel_format is ffmpeg's name of the video's ("yuv420p", "gbrp", "rgb24", ...), None without video.

    Parsed from `ffmpeg -i` (imageio-ffmpeg ships no ffprobe); width/height/fps are None without video.
    `kind` names what the file should be in the message for one ffmpeg cannot read ("video", "audio file").
    """
    if not os.path.isfile(video_path):
        raise UserError(f"{video_path}: file not found; check the path")
    result = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", video_path],
                            capture_output=True, text=True, errors="replace")
    info = result.stderr  # ffmpeg prints stream info to stderr and exits 1 for want of an output file
    if "Stream #" not in info:
        last_line = info.strip().splitlines()[-1] if info.strip() else "no streams"
        last_line = last_line.replace(f"{video_path}: ", "")  # ffmpeg repeats the path
        raise UserError(f"{video_path}: not a readable {kind} ({last_line}); re-encode it with ffmpeg")
    video_line = next((line for line in info.splitlines() if "Video:" in line), "")
    pixel_format = re.search(r"Video: [^,]*, (\w+)", video_line)
    size = re.search(r", (\d+)x(\d+)\b", video_line)  # "..., yuv420p(progressive), 256x256 [SAR 1:1 ...], ..."
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
    if rotation in (90, 270):
        width, height = height, width
    return {
        "width": width,  # as decoded, i.e. after the rotation
        "height": height,
        "fps": float(fps.group(1)) if fps else None,
        "duration": (int(duration.group(1)) * 3600 + int(duration.group(2)) * 60 + float(duration.group(3))
                     if duration else None),
        "has_video": bool(video_line),
        "has_audio": "Audio:" in info,
        "rotation": rotation,
        "colour": colour,
        "pixel_format": pixel_format.group(1) if pixel_format else None,
    }


def read_video_frames(video_path, fps=None):
    """Yield the video's frames as (H, W, 3) uint8 RGB arrays, decoded by ffmpeg (any codec it reads);
    with `fps`, resampled to that rate the way `extract_frames` does, so frame i here is frame i there."""
    info = probe(video_path)
    if not info["has_video"] or info["width"] is None:
        raise UserError(f"{video_path}: no video stream; remove it from the video directory")
    width, height = info["width"], info["height"]
    filters = ["-vf", f"fps={fps}"] if fps else []
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-i", video_path,
               *filters, "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
    frame_bytes = width * height * 3
    with tempfile.TemporaryFile() as log:  # a file, not a pipe: a full stderr pipe would stall ffmpeg
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, bufsize=frame_bytes)
        widen_pipe(process.stdout)
        try:
            while True:
                buffer = process.stdout.read(frame_bytes)
                if len(buffer) < frame_bytes:
                    break  # end of stream (a partial last frame is never yielded)
                yield np.frombuffer(bytearray(buffer), dtype=np.uint8).reshape(height, width, 3)  # writable
            returncode = process.wait()
        finally:
            if process.poll() is None:  # the caller stopped early: stop decoding
                process.kill()
                process.wait()
            process.stdout.close()
        log.seek(0)
        messages = log.read().decode(errors="replace").strip().splitlines()
    if returncode != 0:
        raise UserError(f"{video_path}: ffmpeg could not decode it "
                         f"({messages[-1] if messages else f'exit code {returncode}'}); re-encode it with ffmpeg")


def extract_audio(video_path, wav_path, sample_rate=16000):
    """Write the video's audio as mono 16-bit wav at `sample_rate` (16 kHz: what every audio feature expects)."""
    if not probe(video_path)["has_audio"]:
        raise UserError(f"{video_path}: video has no audio stream; training needs each video's speech, "
                         f"so mux it in (ffmpeg -i video.mp4 -i speech.wav -c:v copy -c:a aac out.mp4)")
    with atomic_output(wav_path) as partial:
        _run_ffmpeg(["-i", video_path, "-vn", "-ac", "1", "-ar", str(sample_rate), "-c:a", "pcm_s16le",
                     "-f", "wav", partial], video_path, output=wav_path)


def resample_video(video_path, output_path, fps=25):
    """Re-encode the first video and audio streams of any file ffmpeg reads as an H.264/AAC mp4 at `fps`."""
    video_codec = ["-c:v", "libx264", "-preset", "veryfast", "-crf", "18", "-pix_fmt", "yuv420p",
                   "-vf", f"fps={fps},pad=ceil(iw/2)*2:ceil(ih/2)*2"]  # yuv420p needs even sizes
    with atomic_output(output_path) as partial:
        _run_ffmpeg(["-i", video_path, "-map", "0:v:0", "-map", "0:a:0?", *video_codec, "-c:a", "aac", "-b:a", "128k",
                     "-movflags", "+faststart", partial], video_path, output=output_path)


def extract_frames(video_path, frame_dir, fps=25):
    """Write the video's frames, resampled to `fps`, as frame_dir/000000.jpg, 000001.jpg, ...; return the count."""
    if not probe(video_path)["has_video"]:
        raise UserError(f"{video_path}: no video stream; remove it from the video directory")
    with atomic_output(frame_dir) as partial:
        os.makedirs(partial)
        _run_ffmpeg(["-i", video_path, "-vf", f"fps={fps}", "-q:v", "2", "-start_number", "0",
                     os.path.join(partial, "%06d.jpg")], video_path, output=frame_dir)
        count = len([name for name in os.listdir(partial) if name.endswith(".jpg")])
    return count
