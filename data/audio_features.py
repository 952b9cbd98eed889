"""Per-video-frame audio features: the one place that defines them (data preparation, training and
inference all call `compute_audio_feature`).

Every feature is an array (T, C): one C-wide vector per 40 ms video frame at 25 fps, so row t describes
the audio under video frame t, as DINet's DeepSpeech features do.
- mel: Wav2Lip's log-mel spectrogram (80 bands at 80 per second), resampled to one vector per frame.
- mfcc: python_speech_features' 13 cepstra at 100 per second, the 4 under each frame stacked (52).
- deepspeech: DINet's 29-d DeepSpeech logits; they need TensorFlow and a 2017 graph, so they are made
  outside this repository and read here (`read_deepspeech`): `.npy`, or the `_deepspeech.txt` files
  DINet's data_processing.py writes with np.savetxt.
A feature is known everywhere by its name alone: after changing MEL or the mfcc steps here, delete the prepared
split_video_25fps_<feature> folders (data preparation keeps features newer than their wav) and train anew (a
checkpoint records the name, so an older one would be driven by the new features without a word).
"""
import math
import os

import librosa
import numpy as np
import python_speech_features
import soundfile

from common.errors import UserError

SAMPLE_RATE = 16000
FEATURE_WIDTHS = {"deepspeech": 29, "mel": 80, "mfcc": 52}

# Wav2Lip's hparams (audio.py), kept exactly so mel features match models trained on Wav2Lip's.
MEL = dict(preemphasis=0.97, n_fft=800, hop_size=200, win_size=800, num_mels=80, fmin=55, fmax=7600,
           ref_level_db=20, min_level_db=-100, max_abs_value=4.0)
MFCC_STEPS_PER_FRAME = 4  # 10 ms cepstra under one 40 ms video frame


def _stft_magnitude(wav):
    """(samples,) -> (n_fft/2 + 1, N) |STFT| as librosa 0.7 (Wav2Lip's) computed it: centred frames with
    reflect padding, periodic Hann window. Written out in numpy because librosa.stft's first call compiles
    numba kernels for ~20 s on a fresh install, longer than the whole demo data set takes to make."""
    n_fft, hop = MEL["n_fft"], MEL["hop_size"]
    padded = np.pad(wav, n_fft // 2, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop]  # (N, n_fft), N = 1 + samples // hop
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    return np.abs(np.fft.rfft(frames * window, axis=1)).T


SLANEY_LOG_STEP = np.log(6.4) / 27.0  # Slaney mel scale above 1 kHz (15 mels): natural-log Hz per mel


def _hz_to_slaney_mel(hz):
    """Slaney's mel scale (librosa's default, htk=False): linear below 1 kHz, logarithmic above."""
    hz = np.asanyarray(hz, dtype=np.float64)
    return np.where(hz >= 1000.0, 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / SLANEY_LOG_STEP, hz * 3.0 / 200.0)


def _slaney_mel_to_hz(mel):
    return np.where(mel >= 15.0, 1000.0 * np.exp(SLANEY_LOG_STEP * (mel - 15.0)), mel * 200.0 / 3.0)


def mel_filter_bank(sample_rate, n_fft, n_mels, fmin, fmax):
    """(n_mels, n_fft/2 + 1) float32 triangular filters, area-normalised: librosa.filters.mel's defaults
    (Slaney scale and norm), written out because importing librosa.filters takes over a second, paid by
    every dubbing run."""
    fft_hz = np.linspace(0, sample_rate / 2, 1 + n_fft // 2)
    edges_hz = _slaney_mel_to_hz(np.linspace(_hz_to_slaney_mel(fmin), _hz_to_slaney_mel(fmax), n_mels + 2))
    widths = np.diff(edges_hz)
    ramps = edges_hz[:, None] - fft_hz[None, :]
    rising, falling = -ramps[:-2] / widths[:-1, None], ramps[2:] / widths[1:, None]
    weights = np.maximum(0, np.minimum(rising, falling))
    weights *= (2.0 / (edges_hz[2:] - edges_hz[:-2]))[:, None]
    return weights.astype(np.float32)


def _wav2lip_melspectrogram(wav):
    """(samples,) float waveform at 16 kHz -> (N, 80) normalised log-mel in [-4, 4], N = 1 + samples // 200."""
    emphasised = np.append(wav[0], wav[1:] - MEL["preemphasis"] * wav[:-1])  # lfilter([1, -k], [1], wav)
    spectrum = _stft_magnitude(emphasised)  # (n_fft/2 + 1, N)
    mel_basis = mel_filter_bank(SAMPLE_RATE, MEL["n_fft"], MEL["num_mels"], MEL["fmin"], MEL["fmax"])  # (80, 401)
    min_level = np.exp(MEL["min_level_db"] / 20 * np.log(10))
    decibels = 20 * np.log10(np.maximum(min_level, mel_basis @ spectrum)) - MEL["ref_level_db"]  # (80, N)
    peak = MEL["max_abs_value"]
    normalised = 2 * peak * (decibels - MEL["min_level_db"]) / -MEL["min_level_db"] - peak
    return np.clip(normalised, -peak, peak).T  # (N, 80)


def _mel_per_frame(wav, num_frames, fps):
    """(N, 80) mel at 80/s -> (T, 80): linear interpolation at each video frame's centre, (t + 0.5) / fps s."""
    mel = _wav2lip_melspectrogram(wav)
    # librosa centres STFT frame j at j * hop samples, so a time of s seconds is mel row s * sr / hop.
    rows = (np.arange(num_frames) + 0.5) / fps * SAMPLE_RATE / MEL["hop_size"]
    rows = np.clip(rows, 0, len(mel) - 1)
    below = np.floor(rows).astype(int)
    above = np.minimum(below + 1, len(mel) - 1)
    weight = (rows - below)[:, None]
    return (1 - weight) * mel[below] + weight * mel[above]  # (T, 80)


def _mfcc_per_frame(wav, num_frames, fps):
    """(T, 52): for frame t, the 13 cepstra of 10 ms steps 4t..4t+3 concatenated."""
    if fps * MFCC_STEPS_PER_FRAME != 100:
        raise ValueError(f"mfcc stacks 4 cepstra of 10 ms per frame, which needs fps=25, not {fps}")
    # python_speech_features is conventionally fed int16-scaled samples (scipy's wavfile); the scale sets
    # the log-energy coefficient, so keep it for features comparable with other code that uses it.
    cepstra = python_speech_features.mfcc(wav * 32768.0, samplerate=SAMPLE_RATE, winlen=0.025, winstep=0.01,
                                          numcep=13)  # (N, 13), N ~ 100 per second
    needed = num_frames * MFCC_STEPS_PER_FRAME
    cepstra = _fit_length(cepstra, needed)
    return cepstra.reshape(num_frames, MFCC_STEPS_PER_FRAME * 13)  # (T, 52)


def _fit_length(rows, length):
    """Trim (N, C) to `length` rows, or pad by repeating the last row (audio a few ms short of the video)."""
    if len(rows) >= length:
        return rows[:length]
    return np.concatenate([rows, np.repeat(rows[-1:], length - len(rows), axis=0)])


def load_wav(path):
    """(samples,) float64 mono waveform in [-1, 1] at 16 kHz (other rates are resampled, channels averaged)."""
    try:
        wav, sample_rate = soundfile.read(path, always_2d=True)  # (samples, channels)
    except soundfile.SoundFileError as error:
        raise UserError(f"{path}: cannot read this audio ({error}); re-extract it with "
                         f"`python data_processing.py --extract_audio`")
    wav = wav.mean(axis=1)
    if sample_rate != SAMPLE_RATE:
        wav = librosa.resample(wav, orig_sr=sample_rate, target_sr=SAMPLE_RATE)
    return wav


def deepspeech_sources(deepspeech_dir, video_name):
    """The file names DeepSpeech features made elsewhere may have, in the order they are looked for."""
    return [os.path.join(deepspeech_dir, video_name + suffix)
            for suffix in ("_deepspeech.npy", ".npy", "_deepspeech.txt")]


def read_array(path):
    """The array in the .npy or text file at `path`. The .npy is mapped, not read: a header that claims more than the
    file holds is a ValueError, not that much memory; so is anything but an array of real numbers (an .npz, a pickled
    object, complex values, whose imaginary part a cast would drop)."""
    array = np.load(path, mmap_mode="r") if path.endswith(".npy") else np.loadtxt(path, ndmin=2)
    if not isinstance(array, np.ndarray):
        raise ValueError(f"{type(array).__name__}, not an array")
    if array.dtype.kind not in "iuf":
        raise ValueError(f"{array.dtype} values, not real numbers")
    return array


def read_deepspeech(deepspeech_dir, video_name):
    """(T, 29) float32 DeepSpeech features of one video from `deepspeech_dir` (.npy or DINet's .txt)."""
    candidates = deepspeech_sources(deepspeech_dir, video_name)
    path = next((candidate for candidate in candidates if os.path.isfile(candidate)), None)
    if path is None:
        raise UserError(f"{candidates[0]}: no DeepSpeech features for {video_name} (also looked for "
                         f"{os.path.basename(candidates[1])}, {os.path.basename(candidates[2])}); make them with "
                         f"DINet's utils/deep_speech.py and pass their folder as --deepspeech_dir")
    try:
        features = read_array(path)
    except (ValueError, EOFError) as error:
        raise UserError(f"{path}: cannot read DeepSpeech features ({error}); make the file again") from None
    width = FEATURE_WIDTHS["deepspeech"]
    if features.ndim != 2 or features.shape[1] != width or len(features) == 0:
        raise UserError(f"{path}: expected (T, {width}) DeepSpeech features, one row per 25 fps frame, "
                         f"got {features.shape}; make the file again")
    return features.astype(np.float32)


def compute_audio_feature(wav_path, name, num_frames=None, fps=25):
    """(T, FEATURE_WIDTHS[name]) float32 features of a wav, one row per video frame.

    T = num_frames when given (features padded by repeating the last row, or trimmed); otherwise the
    number of video frames the audio spans, rounded up.
    """
    if name == "deepspeech":
        raise UserError(f"{wav_path}: DeepSpeech features are not computed here (they need TensorFlow); make "
                         f"them with DINet's utils/deep_speech.py and pass their folder as --deepspeech_dir "
                         f"(<video>_deepspeech.npy or .txt), or use --audio_feature mel or mfcc")
    if name not in FEATURE_WIDTHS:
        raise UserError(f"unknown audio feature {name!r}; choose one of {', '.join(FEATURE_WIDTHS)}")
    wav = load_wav(wav_path)
    if len(wav) == 0:
        raise UserError(f"{wav_path}: empty audio; re-extract it with `python data_processing.py --extract_audio`")
    if num_frames is None:
        num_frames = math.ceil(len(wav) * fps / SAMPLE_RATE)  # a partial last frame still gets a vector
    per_frame = _mel_per_frame if name == "mel" else _mfcc_per_frame
    features = per_frame(wav, num_frames, fps)
    return features.astype(np.float32)  # (T, C)
