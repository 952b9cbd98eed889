"""Footage people bring, made with ffmpeg from the real sample clips in ../shared/data: a face that goes and comes
back, two faces, a hard cut, a photograph, speech in other formats. Every clip is small and short (360x640 unless
said, 25 fps, H.264 + AAC) so that dubbing it in a test takes seconds. Tests that use these carry
`pytest.mark.needs_shared(*SOURCES)`; each function writes `path` and returns what a test needs to know of it."""
import os

from conftest import SHARED
from media.convert import AUDIO_CODEC, VIDEO_CODEC
from media.ffmpeg import run

CLIP_A, CLIP_B = "data/talking_head_a.mp4", "data/talking_head_b.mp4"  # 1080x1920 HEVC portrait, 25 fps, AAC
SPEECH_A = "data/driving_speech_a.wav"
SOURCES = (CLIP_A, CLIP_B, SPEECH_A)
FPS, WIDTH, HEIGHT = 25, 360, 640
# Exif header, a big-endian TIFF header, one tag (0x0112 Orientation, a SHORT: 6, turn a quarter clockwise)
EXIF_TURNED = b"Exif\0\0MM\0\x2a\0\0\0\x08\0\x01\x01\x12\0\x03\0\0\0\x01\0\x06\0\0\0\0\0\0"
SMALL = f"scale={WIDTH}:{HEIGHT}:force_original_aspect_ratio=decrease,pad={WIDTH}:{HEIGHT}:-1:-1,setsar=1,fps={FPS}"


def shared(name):
    return os.path.join(SHARED, name)


def ffmpeg(path, inputs, filters=None, audio="0:a", codecs=(*VIDEO_CODEC, *AUDIO_CODEC)):
    """Run ffmpeg on `inputs` (its input arguments) with `filters` (a filter graph whose video output is [v]) and
    write `path`, with the audio stream `audio` (None: none)."""
    graph = ["-filter_complex", filters, "-map", "[v]"] if filters else []
    sound = ["-map", audio] if audio else ["-an"]
    run([*inputs, *graph, *sound, *codecs, str(path)], inputs[inputs.index("-i") + 1], str(path))


def short_clip(path, seconds=3, source=CLIP_A):
    """The first `seconds` of a sample clip, small, with its sound."""
    ffmpeg(path, ["-t", str(seconds), "-i", shared(source)], f"[0:v]{SMALL}[v]")


def gap_clip(path, seconds=6, gap=(2, 4), filler="black"):
    """Clip A with seconds gap[0] to gap[1] covered by `filler`: "black", or "pattern" (ffmpeg's test pattern, a
    picture with no face), the sound going on throughout; the range of frames covered."""
    frames = range(gap[0] * FPS, gap[1] * FPS)
    source = {"black": "color=c=black:", "pattern": "testsrc2="}[filler]
    ffmpeg(path, ["-t", str(seconds), "-i", shared(CLIP_A)],
           f"[0:v]{SMALL}[a];{source}s={WIDTH}x{HEIGHT}:r={FPS}[b];"
           f"[a][b]overlay=shortest=1:enable='between(n,{frames.start},{frames.stop - 1})'[v]")
    return frames


def side_by_side(path, seconds=4):
    """Clip A (left) and clip B (right) side by side, each 360x640: two faces, A's sound; the first column of B."""
    ffmpeg(path, ["-t", str(seconds), "-i", shared(CLIP_A), "-t", str(seconds), "-i", shared(CLIP_B)],
           f"[0:v]{SMALL}[a];[1:v]{SMALL}[b];[a][b]hstack[v]")
    return WIDTH


def pan_clip(path):
    """A 360x640 window on clip A at 720x1280 that rests on the face for a second, slides down over a second to
    the lap, rests there for a second, slides back up and rests on the face again (5 s); the range of frames
    where the face is wholly out of the picture (the window at the bottom)."""
    # the window's top: 160 (the face in the middle), HEIGHT from frame 50 to 75 (below the chin), 160 from frame 100
    top = f"160+{HEIGHT - 160}*min(1\\,max(0\\,min((n-{FPS})/{FPS}\\,({4 * FPS}-n)/{FPS})))"
    ffmpeg(path, ["-t", "5", "-i", shared(CLIP_A)],
           f"[0:v]scale={2 * WIDTH}:{2 * HEIGHT},fps={FPS},crop={WIDTH}:{HEIGHT}:(iw-ow)/2:'{top}',setsar=1[v]")
    return range(2 * FPS, 3 * FPS + 1)


def wide_shot(path, size=(2560, 1440), person=240, seconds=1.2):
    """A wide shot: clip A shrunk to `person` px wide (its face about 60 px) on a `size` picture of the trees above
    her head, two thirds of the way across and a third of the way down (25 fps, A's sound); the person's box
    (left, top, right, bottom) in pixels. person=0: the trees alone."""
    width, height = size
    trees = f"[0:v]crop=1080:550:0:0,scale={width}:{height},setsar=1,fps={FPS}"
    left, top = width * 2 // 3, height // 3
    ffmpeg(path, ["-t", str(seconds), "-i", shared(CLIP_A)],
           f"{trees}[v]" if not person else
           f"{trees}[bg];[0:v]scale={person}:-2,fps={FPS}[fg];[bg][fg]overlay={left}:{top}:shortest=1[v]")
    return left, top, left + person, top + person * 1920 // 1080


def screen_recording(path, seconds=1.2, person=216):
    """A webcam over a shared screen: clip A shrunk to `person` px wide (its face about 60 px) in the bottom right
    corner of ffmpeg's moving test pattern at 1280x720, from the pattern's 50th frame, in which a detector takes
    some of the pattern for a large face in a frame or two (25 fps, A's sound); the person's box (left, top, right,
    bottom) in pixels."""
    left, top = 1280 - person - 10, 720 - person * 1920 // 1080 - 10
    ffmpeg(path, ["-t", str(seconds), "-i", shared(CLIP_A)],
           f"testsrc2=s=1280x720:r={FPS},trim=start_frame=50,setpts=PTS-STARTPTS[bg];"
           f"[0:v]scale={person}:-2,fps={FPS}[fg];[bg][fg]overlay={left}:{top}:shortest=1[v]")
    return left, top, left + person, top + person * 1920 // 1080


def cut_clip(path, seconds=(2, 2)):
    """Clip A for seconds[0], then a hard cut to clip B for seconds[1] (scaled and padded to the same size), each
    with its own sound; the first frame of B."""
    first, second = seconds
    ffmpeg(path, ["-t", str(first), "-i", shared(CLIP_A), "-t", str(second), "-i", shared(CLIP_B)],
           f"[0:v]{SMALL}[a];[1:v]{SMALL}[b];[0:a]aresample=48000[sa];[1:a]aresample=48000[sb];"
           f"[a][sa][b][sb]concat=n=2:v=1:a=1[v][s]", audio="[s]")
    return first * FPS


def still(path, second=1.0, turned=False):
    """The frame of clip A at `second`, small, as a photograph: its format is the extension's (jpg, png, webp).
    `turned` (jpg only): as a phone stores a portrait photograph, the pixels a quarter turn anticlockwise and an
    EXIF orientation (6) telling viewers to turn them back."""
    quality = {".jpg": ["-q:v", "2"], ".webp": ["-quality", "90"]}.get(os.path.splitext(str(path))[1], [])
    ffmpeg(path, ["-ss", str(second), "-i", shared(CLIP_A)], f"[0:v]{SMALL}{',transpose=cclock' * turned}[v]",
           audio=None, codecs=["-frames:v", "1", "-update", "1", *quality])
    if turned:
        with open(path, "rb") as file:
            data = file.read()
        with open(path, "wb") as file:  # the APP1 segment right after the start-of-image marker
            file.write(data[:2] + b"\xff\xe1" + (len(EXIF_TURNED) + 2).to_bytes(2, "big") + EXIF_TURNED + data[2:])


def speech(path, rate=16000, channels=1, seconds=2.4):
    """The first `seconds` of driving_speech_a.wav at `rate` Hz with `channels`, encoded as the extension says
    (mp3, m4a as AAC, wav as 16-bit PCM); its length in seconds."""
    codec = {".mp3": ["-c:a", "libmp3lame", "-b:a", "128k"], ".m4a": ["-c:a", "aac", "-b:a", "128k"],
             ".wav": ["-c:a", "pcm_s16le"]}[os.path.splitext(str(path))[1]]
    ffmpeg(path, ["-t", str(seconds), "-i", shared(SPEECH_A)], audio="0:a",
           codecs=["-ar", str(rate), "-ac", str(channels), *codec])
    return seconds


def speech_with_silence(path, silence=(1.6, 2.8), seconds=4.0):
    """driving_speech_a.wav for `seconds`, with digital silence from silence[0] to silence[1] s in place of the
    speech there (16 kHz mono wav); the range of frames that are silent."""
    start, stop = silence
    ffmpeg(path, ["-t", str(seconds), "-i", shared(SPEECH_A)], audio="0:a",
           codecs=["-af", f"volume=enable='between(t,{start},{stop})':volume=0", "-ar", "16000", "-ac", "1",
                   "-c:a", "pcm_s16le"])
    return range(round(start * FPS), round(stop * FPS))
