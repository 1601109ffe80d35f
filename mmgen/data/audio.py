"""Built-in audio that needs no download: procedural tones, espeak-ng speech, a user's folder of sound files.

Every dataset yields items ``{"audio": FloatTensor[1, T] in [-1, 1], "class_id": int, "caption": str}``
(mono with the channel axis kept, as EnCodec/DAC take it; ``class_id = -1`` and ``caption = ""`` where there
is no label) and has ``batch(indices)`` returning the same keys stacked (``audio`` becomes ``[B, 1, T]``,
``class_id`` a long tensor, ``caption`` a list). Each has ``modality = "audio"`` and its ``sample_rate``.

Tones are checkable by code (see :func:`mmgen.metrics.judge_tone`), so generators trained on them can be
scored for prompt adherence; the speech clips are real, out-of-domain sound for codec reconstruction checks.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .images import SPLITS, _check_seed, _folder, _item_rng

__all__ = [
    "TONE_KINDS",
    "TONE_ROOTS",
    "ROOT_HZ",
    "NUM_TONE_CLASSES",
    "tone_class_id",
    "tone_class_parts",
    "tone_caption",
    "parse_tone_caption",
    "render_tone",
    "TonesDataset",
    "SpeechClips",
    "SPEECH_SENTENCES",
    "SPEECH_VOICES",
    "SPEECH_SPEEDS",
    "AudioFolder",
    "AUDIO_SUFFIXES",
    "resample",
]

TONE_KINDS: tuple[str, ...] = ("tone", "major chord", "rising chirp", "falling chirp")
TONE_ROOTS: tuple[str, ...] = ("C4", "D4", "E4", "F4", "G4", "A4", "B4")
_SEMITONES_FROM_A4 = {"C4": -9, "D4": -7, "E4": -5, "F4": -4, "G4": -2, "A4": 0, "B4": 2}
ROOT_HZ: dict[str, float] = {root: 440.0 * 2.0 ** (_SEMITONES_FROM_A4[root] / 12) for root in TONE_ROOTS}  # equal temperament
NUM_TONE_CLASSES = len(TONE_KINDS) * len(TONE_ROOTS)
MAJOR_CHORD_SEMITONES: tuple[int, ...] = (0, 4, 7)  # root, major third, fifth
CHIRP_OCTAVES = {"rising chirp": 1.0, "falling chirp": -1.0}  # exponential sweep over the whole clip
MAX_PARTIAL_FRACTION = 0.45  # of the sample rate: partials that would reach above are left out (no aliasing)
_TONES_STREAM = 16  # random streams 16, 17 for the tones' train / heldout splits, apart from the shapes' 0, 1
_DETUNE_STREAM = 18  # streams 18, 19: the detune draws, apart, so a detuned item keeps the plain one's timbre


def tone_class_id(kind: str, root: str) -> int:
    """Class id of a (kind, root) pair: ``kind_index * 7 + root_index``."""
    if kind not in TONE_KINDS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {TONE_KINDS}")
    if root not in TONE_ROOTS:
        raise ValueError(f"unknown root {root!r}; expected one of {TONE_ROOTS}")
    return TONE_KINDS.index(kind) * len(TONE_ROOTS) + TONE_ROOTS.index(root)


def tone_class_parts(class_id: int) -> tuple[str, str]:
    """``(kind, root)`` of a class id: the inverse of :func:`tone_class_id`."""
    if isinstance(class_id, bool) or not isinstance(class_id, (int, np.integer)) or not 0 <= class_id < NUM_TONE_CLASSES:
        raise ValueError(f"class_id must be an int in [0, {NUM_TONE_CLASSES}), got {class_id!r}")
    return TONE_KINDS[int(class_id) // len(TONE_ROOTS)], TONE_ROOTS[int(class_id) % len(TONE_ROOTS)]


def tone_caption(class_id: int) -> str:
    """Caption of a class: ``"a C4 tone"``, ``"a C4 major chord"``, ``"a rising chirp from C4"``, ``"a falling chirp from C4"``."""
    kind, root = tone_class_parts(class_id)
    return f"a {kind} from {root}" if kind in CHIRP_OCTAVES else f"a {root} {kind}"


_CAPTION_TO_ID = {tone_caption(cid).lower(): cid for cid in range(NUM_TONE_CLASSES)}


def parse_tone_caption(text: str) -> int:
    """Class id of a caption written as :func:`tone_caption` writes it (case and extra spaces ignored)."""
    key = " ".join(text.strip().lower().split())
    if key not in _CAPTION_TO_ID:
        raise ValueError(f"cannot parse caption text={text!r}: expected 'a <root> tone', 'a <root> major chord', "
                         f"'a rising chirp from <root>' or 'a falling chirp from <root>' with root in {TONE_ROOTS}")
    return _CAPTION_TO_ID[key]


def _check_rate_and_seconds(sample_rate: int, seconds: float) -> None:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate < 1:
        raise ValueError(f"sample_rate must be a positive int, got {sample_rate!r}")
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or round(seconds * sample_rate) < 1:
        raise ValueError(f"seconds must be a positive number giving at least one sample, got {seconds!r}")


def _envelope(num_samples: int, *, sample_rate: int, attack: float, release: float, decay: float) -> np.ndarray:
    """Raised-cosine attack and release around a sustain that decays exponentially to ``decay`` at the end."""
    t = np.arange(num_samples) / sample_rate
    duration = num_samples / sample_rate
    attack, release = min(attack, duration / 4), min(release, duration / 4)
    rise = 0.5 - 0.5 * np.cos(np.pi * np.clip(t / attack, 0.0, 1.0))
    fall = 0.5 - 0.5 * np.cos(np.pi * np.clip((duration - t) / release, 0.0, 1.0))
    return rise * fall * decay ** (t / duration)


def render_tone(kind: str, root: str, *, sample_rate: int = 16000, seconds: float = 1.0,
                rng: np.random.Generator | None = None, detune_semitones: float = 0.0) -> torch.Tensor:
    """Render one tone-set clip as ``[1, T]`` in [-1, 1].

    A ``"tone"`` is a harmonic sound at the root; a ``"major chord"`` sounds the root, its major third and
    fifth with the same timbre; a chirp sweeps exponentially one octave up or down over the clip, starting
    at the root. Without ``rng`` the clip is the plain version (fixed timbre and envelope, peak 0.6, no
    noise); with it, the number and weights of the harmonics, their phases, the chord notes' levels, the
    attack, release and decay, the peak level (0.3 to 0.9) and a little white noise are drawn from ``rng``.
    The fundamental is always the strongest harmonic, so the pitch one hears is the root (moved by
    ``detune_semitones``, which a codec's training data uses to cover every pitch, not only the seven roots).
    """
    tone_class_id(kind, root)  # checks kind and root
    _check_rate_and_seconds(sample_rate, seconds)
    if rng is not None and not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be None or a numpy.random.Generator (np.random.default_rng(seed)), got {type(rng).__name__}")
    num_samples = int(round(seconds * sample_rate))
    if rng is None:
        weights, phases = np.array([1.0, 0.5, 0.33, 0.25]), np.zeros(4)
        note_gains, (attack, release, decay), peak, noise = np.ones(3), (0.02, 0.1, 0.8), 0.6, 0.0
    else:
        count = int(rng.integers(3, 7))
        weights = np.arange(1, count + 1) ** -rng.uniform(0.7, 1.8) * np.concatenate([[1.0], rng.uniform(0.5, 1.0, count - 1)])
        phases = rng.uniform(0.0, 2 * np.pi, count)
        note_gains = np.concatenate([[1.0], rng.uniform(0.6, 1.0, 2)])
        attack, release, decay = rng.uniform(0.005, 0.05), rng.uniform(0.05, 0.25), rng.uniform(0.4, 1.0)
        peak, noise = rng.uniform(0.3, 0.9), rng.uniform(0.001, 0.01)
    t = np.arange(num_samples) / sample_rate
    root_hz = ROOT_HZ[root] * 2.0 ** (float(detune_semitones) / 12)
    notes = [root_hz * 2.0 ** (s / 12) for s in MAJOR_CHORD_SEMITONES] if kind == "major chord" else [root_hz]
    octaves = CHIRP_OCTAVES.get(kind, 0.0)
    if octaves:  # f(t) = f0 2^(octaves t / seconds); the phase is its integral
        rate = octaves * math.log(2.0) / seconds
        cycles = root_hz * np.expm1(rate * t) / rate
        top_hz = root_hz * max(1.0, 2.0 ** octaves)
    else:
        cycles, top_hz = None, max(notes)
    wave = np.zeros(num_samples)
    for note_hz, gain in zip(notes, note_gains):
        for harmonic, (weight, phase) in enumerate(zip(weights, phases), start=1):
            if harmonic * top_hz >= MAX_PARTIAL_FRACTION * sample_rate:
                break
            angle = 2 * np.pi * harmonic * (cycles if cycles is not None else note_hz * t) + phase
            wave += gain * weight * np.sin(angle)
    wave *= _envelope(num_samples, sample_rate=sample_rate, attack=attack, release=release, decay=decay)
    wave *= peak / max(np.abs(wave).max(), 1e-12)
    if noise:
        wave += rng.normal(0.0, noise, num_samples)
    return torch.from_numpy(np.clip(wave, -1.0, 1.0).astype(np.float32))[None]


class TonesDataset(Dataset):
    """Procedural tones: 28 (kind x root) classes of jittered harmonic tones, chords and chirps.

    Item ``i`` is a pure function of ``(seed, split, i)``; ``"heldout"`` draws from another random stream
    than ``"train"``, so its clips are new ones. Classes cycle with the index (``class_id = i % 28``), so
    any 28 consecutive items hold every class once. ``detune`` > 0 moves each item's root by a uniform draw
    in ±``detune`` semitones (the label stays the nominal class): training data for a codec that should
    reproduce any pitch, not only the seven roots.
    """

    modality = "audio"

    def __init__(self, *, length: int, split: str = "train", seed: int = 0, sample_rate: int = 16000,
                 seconds: float = 1.0, detune: float = 0.0) -> None:
        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise ValueError(f"length must be a positive int, got {length!r}")
        if isinstance(detune, bool) or not isinstance(detune, (int, float)) or not 0 <= detune <= 24:
            raise ValueError(f"detune must be a number of semitones in [0, 24], got {detune!r}")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        _check_rate_and_seconds(sample_rate, seconds)
        self.length, self.split, self.seed = length, split, _check_seed(seed)
        self.sample_rate, self.seconds, self.detune = sample_rate, float(seconds), float(detune)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -self.length <= index < self.length:
            raise IndexError(f"index {index} out of range for a TonesDataset of length {self.length}")
        index = int(index) % self.length
        cid = index % NUM_TONE_CLASSES
        kind, root = tone_class_parts(cid)
        rng = _item_rng(self.seed, _TONES_STREAM + SPLITS.index(self.split), index)
        detune = float(_item_rng(self.seed, _DETUNE_STREAM + SPLITS.index(self.split), index).uniform(-self.detune, self.detune)) if self.detune else 0.0
        audio_1T = render_tone(kind, root, sample_rate=self.sample_rate, seconds=self.seconds, rng=rng, detune_semitones=detune)
        return {"audio": audio_1T, "class_id": cid, "caption": tone_caption(cid)}

    def batch(self, indices: Sequence[int]) -> dict[str, Any]:
        """Items ``indices`` stacked: ``audio [B, 1, T]``, ``class_id [B]``, ``caption`` (a list)."""
        return _stack([self[int(i)] for i in indices])


def _stack(items: list[dict[str, Any]]) -> dict[str, Any]:
    if not items:
        raise ValueError("indices must not be empty")
    return {"audio": torch.stack([item["audio"] for item in items]),
            "class_id": torch.tensor([item["class_id"] for item in items], dtype=torch.long),
            "caption": [item["caption"] for item in items]}


def resample(audio: torch.Tensor, *, orig_rate: int, target_rate: int) -> torch.Tensor:
    """``audio [..., T]`` resampled along its last axis from ``orig_rate`` to ``target_rate`` Hz.

    Polyphase filtering (``scipy.signal.resample_poly``, Kaiser window) in float64, returned in the input's
    dtype and device; the output has ``ceil(T * target_rate / orig_rate)`` samples. Equal rates return the
    input itself.
    """
    from scipy.signal import resample_poly

    for name, value in (("orig_rate", orig_rate), ("target_rate", target_rate)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not isinstance(audio, torch.Tensor) or not audio.is_floating_point() or audio.dim() < 1:
        got = f"{audio.dtype} {tuple(audio.shape)}" if isinstance(audio, torch.Tensor) else type(audio).__name__
        raise TypeError(f"audio must be a float tensor [..., T], got {got}")
    if orig_rate == target_rate:
        return audio
    common = math.gcd(int(orig_rate), int(target_rate))
    out = resample_poly(audio.detach().cpu().double().numpy(), int(target_rate) // common, int(orig_rate) // common, axis=-1)
    return torch.from_numpy(np.ascontiguousarray(out)).to(dtype=audio.dtype, device=audio.device)


def _fit_clip(audio_T: np.ndarray, num_samples: int, *, hop: int) -> np.ndarray:
    """The loudest ``num_samples`` window (searched every ``hop`` samples), or the clip centred in zeros."""
    if len(audio_T) <= num_samples:
        start = (num_samples - len(audio_T)) // 2
        return np.pad(audio_T, (start, num_samples - len(audio_T) - start))
    energy = np.concatenate([[0.0], np.cumsum(audio_T.astype(np.float64) ** 2)])
    starts = np.arange(0, len(audio_T) - num_samples + 1, hop)
    best = int(starts[np.argmax(energy[starts + num_samples] - energy[starts])])
    return audio_T[best:best + num_samples]


SPEECH_SENTENCES: tuple[str, ...] = (
    "The quick brown fox jumps over the lazy dog.",
    "She sells sea shells by the sea shore.",
    "Open the window and let the fresh air in.",
    "Seven silver boats sailed across the bay.",
    "Please call me back before nine tonight.",
    "A cup of hot tea warms a cold morning.",
    "The red train leaves the station at noon.",
    "Birds were singing in the tall green trees.",
    "My brother plays the drums every weekend.",
    "We walked home slowly through the rain.",
    "Numbers like four, eight and twelve are even.",
    "Turn left at the bridge, then keep going.",
)
SPEECH_VOICES: tuple[str, ...] = ("en-us", "en-us+f3", "en-gb+m3", "en-gb-x-rp+f2")  # espeak-ng voice+variant
SPEECH_SPEEDS: tuple[int, ...] = (130, 175)  # words per minute
SPEECH_PEAK = 0.7
ESPEAK_RATE = 22050  # the sample rate espeak-ng writes


def _espeak_path() -> str:
    path = shutil.which("espeak-ng")
    if path is None:
        raise RuntimeError("SpeechClips needs the espeak-ng program, which is not on PATH: install the Debian "
                           "package espeak-ng (apt-get install espeak-ng)")
    return path


@lru_cache(maxsize=None)
def _speak(sentence: str, voice: str, speed: int) -> np.ndarray:
    """espeak-ng's rendering of one sentence as float32 samples at :data:`ESPEAK_RATE` (cached: it is deterministic)."""
    import soundfile

    with tempfile.TemporaryDirectory(prefix="mmgen-espeak-") as folder:
        wav = Path(folder) / "speech.wav"
        result = subprocess.run([_espeak_path(), "-v", voice, "-s", str(speed), "-w", str(wav), "--stdin"],
                                input=sentence, text=True, capture_output=True, check=False)
        if result.returncode != 0 or not wav.is_file():
            raise RuntimeError(f"espeak-ng failed for voice {voice!r}, speed {speed}: {result.stderr.strip() or result.returncode}")
        samples, rate = soundfile.read(str(wav), dtype="float32", always_2d=True)
    if rate != ESPEAK_RATE:
        raise RuntimeError(f"espeak-ng wrote {rate} Hz audio, expected {ESPEAK_RATE} Hz")
    return samples.mean(axis=1)


class SpeechClips(Dataset):
    """Real speech with no download: espeak-ng speaking fixed sentences in several voices and speeds.

    One item per (sentence, voice, speed), sentences varying fastest: the loudest ``seconds`` of the
    utterance (searched in 10 ms steps, so a clip is mostly speech), resampled to ``sample_rate`` and peak
    normalised to 0.7. Deterministic; each utterance is synthesised once per process (about 20 ms). This is
    the out-of-domain check for codecs trained on tones. Needs the Debian package ``espeak-ng``.
    """

    modality = "audio"

    def __init__(self, *, sample_rate: int = 16000, seconds: float = 1.0, sentences: Sequence[str] = SPEECH_SENTENCES,
                 voices: Sequence[str] = SPEECH_VOICES, speeds: Sequence[int] = SPEECH_SPEEDS) -> None:
        _check_rate_and_seconds(sample_rate, seconds)
        for name, values in (("sentences", sentences), ("voices", voices), ("speeds", speeds)):
            if isinstance(values, str) or not values:
                raise ValueError(f"{name} must be a non-empty sequence, got {values!r}")
        for name, values in (("sentences", sentences), ("voices", voices)):
            if any(not isinstance(s, str) or not s.strip() for s in values):
                raise ValueError(f"{name} must be non-empty strings, got {list(values)!r}")
        if any(isinstance(s, bool) or not isinstance(s, int) or not 80 <= s <= 450 for s in speeds):
            raise ValueError(f"speeds must be ints in [80, 450] words per minute (espeak-ng's range), got {list(speeds)!r}")
        _espeak_path()
        self.sample_rate, self.seconds = sample_rate, float(seconds)
        self.sentences, self.voices, self.speeds = tuple(sentences), tuple(voices), tuple(speeds)

    def __len__(self) -> int:
        return len(self.sentences) * len(self.voices) * len(self.speeds)

    def parts(self, index: int) -> tuple[str, str, int]:
        """``(sentence, voice, speed)`` of item ``index``."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for SpeechClips of length {len(self)}")
        index = int(index) % len(self)
        sentences, voices = len(self.sentences), len(self.voices)
        return self.sentences[index % sentences], self.voices[index // sentences % voices], self.speeds[index // (sentences * voices)]

    def __getitem__(self, index: int) -> dict[str, Any]:
        sentence, voice, speed = self.parts(index)
        speech_T = torch.from_numpy(_speak(sentence, voice, speed))
        speech_T = resample(speech_T, orig_rate=ESPEAK_RATE, target_rate=self.sample_rate).numpy()
        clip_T = _fit_clip(speech_T, int(round(self.seconds * self.sample_rate)), hop=max(1, self.sample_rate // 100))
        clip_T = clip_T * (SPEECH_PEAK / max(float(np.abs(clip_T).max()), 1e-12))
        return {"audio": torch.from_numpy(clip_T.astype(np.float32))[None], "class_id": -1, "caption": sentence}

    def batch(self, indices: Sequence[int]) -> dict[str, Any]:
        """Items ``indices`` stacked: ``audio [B, 1, T]``, ``class_id`` (all -1), ``caption`` (the sentences)."""
        return _stack([self[int(i)] for i in indices])


AUDIO_SUFFIXES: tuple[str, ...] = (".wav", ".flac", ".ogg")


class AudioFolder(Dataset):
    """Every sound file under ``path`` (recursive; wav, flac, ogg) as consecutive clips of ``seconds``.

    Files are sorted by path, so indices are stable. Each is mixed down to mono (the channels' mean) and
    resampled to ``sample_rate``; a last partial clip is zero-padded if it is at least half a clip long,
    else dropped. Headers are read at construction (so a bad file fails there, by name); samples lazily.
    """

    modality = "audio"

    def __init__(self, path: str | Path, *, sample_rate: int = 16000, seconds: float = 1.0) -> None:
        import soundfile

        _check_rate_and_seconds(sample_rate, seconds)
        self.root = _folder("path", path, "audio")
        self.paths = sorted(p for p in self.root.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
        if not self.paths:
            raise ValueError(f"audio folder {str(self.root)!r} holds no audio files (looked for {', '.join(AUDIO_SUFFIXES)}, recursively)")
        self.sample_rate, self.seconds = sample_rate, float(seconds)
        self.clip_samples = int(round(self.seconds * sample_rate))
        self.clips: list[tuple[int, int]] = []  # (file index, clip index within the file)
        for file_index, file in enumerate(self.paths):
            try:
                info = soundfile.info(str(file))
            except (RuntimeError, TypeError) as err:  # soundfile.LibsndfileError is a RuntimeError
                raise ValueError(f"cannot read audio file {str(file)!r}: {err}") from err
            num_samples = math.ceil(info.frames * sample_rate / info.samplerate)
            full, rest = divmod(num_samples, self.clip_samples)
            self.clips += [(file_index, k) for k in range(full + (2 * rest >= self.clip_samples))]
        if not self.clips:
            raise ValueError(f"audio folder {str(self.root)!r} holds no clip: every file is shorter than half of "
                             f"{self.seconds} s")
        self._loaded: tuple[int, torch.Tensor] | None = None  # the last file read: clips are mostly read in order

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> dict[str, Any]:
        file_index, clip = self.clips[index]
        if self._loaded is None or self._loaded[0] != file_index:
            self._loaded = (file_index, self._read(file_index))
        audio_T = self._loaded[1][clip * self.clip_samples:(clip + 1) * self.clip_samples]
        audio_T = torch.nn.functional.pad(audio_T, (0, self.clip_samples - len(audio_T)))
        return {"audio": audio_T[None], "class_id": -1, "caption": ""}

    def batch(self, indices: Sequence[int]) -> dict[str, Any]:
        """Items ``indices`` stacked: ``audio [B, 1, T]``, ``class_id`` (all -1), ``caption`` (all empty)."""
        return _stack([self[int(i)] for i in indices])

    def _read(self, file_index: int) -> torch.Tensor:
        """One whole file as mono float32 ``[T]`` at ``sample_rate``, clipped to [-1, 1]."""
        import soundfile

        file = self.paths[file_index]
        try:
            samples, rate = soundfile.read(str(file), dtype="float32", always_2d=True)
        except (RuntimeError, TypeError) as err:
            raise ValueError(f"cannot read audio file {str(file)!r}: {err}") from err
        mono_T = torch.from_numpy(samples.mean(axis=1))
        return resample(mono_T, orig_rate=rate, target_rate=self.sample_rate).clamp(-1.0, 1.0)
