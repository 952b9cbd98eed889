"""The conversions of data preparation: a video's audio as wav, any video as a 25 fps mp4, a video's frames as
JPEGs. Each output is written under a hidden name and renamed when complete (common/files.py)."""
import contextlib
import os

from common.errors import UserError
from common.files import atomic_output

from .ffmpeg import probe, run


def extract_audio(video_path, wav_path, sample_rate=16000):
    """Write the video's first audio track as mono 16-bit wav at `sample_rate` (16 kHz: what every audio feature
    expects), from the file's start: a track that starts late is preceded by silence, as it plays."""
    if not probe(video_path, "audio file")["has_audio"]:  # its video stream may be unreadable: not needed here
        raise UserError(f"{video_path}: video has no audio stream; training needs each video's speech, "
                        f"so mux it in (ffmpeg -i video.mp4 -i speech.wav -c:v copy -c:a aac out.mp4)")
    with atomic_output(wav_path) as partial:
        run(["-i", video_path, "-map", "0:a:0", "-af", "aresample=first_pts=0", "-ac", "1", "-ar", str(sample_rate),
             "-c:a", "pcm_s16le", "-f", "wav", partial], video_path, wav_path)


VIDEO_CODEC = ["-c:v", "libx264", "-preset", "veryfast", "-crf", "18", "-pix_fmt", "yuv420p"]
AUDIO_CODEC = ["-c:a", "aac", "-b:a", "128k", "-movflags", "+faststart"]
EVEN_SIZE = "pad=ceil(iw/2)*2:ceil(ih/2)*2"  # yuv420p needs even sizes


def resample_video(video_path, output_path, fps=25):
    """Re-encode the first video and audio streams of any file ffmpeg reads as an H.264/AAC mp4 at `fps`."""
    with atomic_output(output_path) as partial:
        run(["-i", video_path, "-map", "0:v:0", "-map", "0:a:0?", *VIDEO_CODEC, "-vf", f"fps={fps},{EVEN_SIZE}",
             *AUDIO_CODEC, partial], video_path, output_path)


def cut_video(video_path, spans, output_paths, fps=25):
    """Write frames [start, stop) of the video resampled to `fps` (frame i as extract_frames numbers it), with the
    audio of the same time, to each output (H.264/AAC mp4s at `fps`), for each (start, stop) of `spans`. One decode
    feeds every output, so spans that meet share no frame and leave none out."""
    count = len(spans)
    video = [f"[0:v]fps={fps},{EVEN_SIZE},split={count}" + "".join(f"[v{i}]" for i in range(count))]
    # a track that starts late gets silence before it, so each span is given the sound of its own time
    audio = [f"[0:a]aresample=first_pts=0,asplit={count}" + "".join(f"[a{i}]" for i in range(count))]
    outputs = []
    for i, (start, stop) in enumerate(spans):
        video.append(f"[v{i}]trim=start_frame={start}:end_frame={stop},setpts=PTS-STARTPTS[video{i}]")
        audio.append(f"[a{i}]atrim=start={start / fps}:end={stop / fps},asetpts=PTS-STARTPTS[audio{i}]")
        outputs.append(["-map", f"[video{i}]", "-map", f"[audio{i}]", *VIDEO_CODEC, *AUDIO_CODEC])
    with contextlib.ExitStack() as stack:
        partials = [stack.enter_context(atomic_output(path)) for path in output_paths]
        run(["-i", video_path, "-filter_complex", ";".join(video + audio),
             *(argument for output, partial in zip(outputs, partials) for argument in [*output, partial])],
            video_path, output_paths[0])


def extract_frames(video_path, frame_dir, fps=25):
    """Write the video's frames, resampled to `fps`, as frame_dir/000000.jpg, 000001.jpg, ...; return the count."""
    if not probe(video_path)["has_video"]:
        raise UserError(f"{video_path}: no video stream; remove it from the video directory")
    with atomic_output(frame_dir) as partial:
        os.makedirs(partial)
        # the folder's own % signs doubled: ffmpeg reads one as a frame number's place, as in %06d
        run(["-i", video_path, "-vf", f"fps={fps}", "-q:v", "2", "-start_number", "0",
             os.path.join(partial.replace("%", "%%"), "%06d.jpg")], video_path, frame_dir)
        count = len([name for name in os.listdir(partial) if name.endswith(".jpg")])
    return count
