"""Built-in audio: procedural tones (classes, captions, determinism, splits, chirps), espeak-ng speech, audio folders."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import soundfile
import torch

from mmgen.data import (
    NUM_TONE_CLASSES,
    ROOT_HZ,
    TONE_KINDS,
    TONE_ROOTS,
    AudioFolder,
    SpeechClips,
    TonesDataset,
    parse_tone_caption,
    render_tone,
    resample,
    tone_caption,
    tone_class_id,
    tone_class_parts,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --- classes and captions ---------------------------------------------------------------------------

def test_tone_class_ids_and_captions_round_trip():
    assert NUM_TONE_CLASSES == 28
    for kind in TONE_KINDS:
        for root in TONE_ROOTS:
            cid = tone_class_id(kind, root)
            assert cid == TONE_KINDS.index(kind) * 7 + TONE_ROOTS.index(root)
            assert tone_class_parts(cid) == (kind, root)
            assert parse_tone_caption(tone_caption(cid)) == cid
            assert parse_tone_caption("  " + tone_caption(cid).upper().replace(" ", "  ") + " ") == cid
    assert len({tone_caption(c) for c in range(NUM_TONE_CLASSES)}) == 28


def test_exact_captions_and_equal_temperament():
    assert tone_caption(tone_class_id("tone", "C4")) == "a C4 tone"
    assert tone_caption(tone_class_id("major chord", "C4")) == "a C4 major chord"
    assert tone_caption(tone_class_id("rising chirp", "C4")) == "a rising chirp from C4"
    assert tone_caption(tone_class_id("falling chirp", "B4")) == "a falling chirp from B4"
    assert ROOT_HZ["A4"] == 440.0
    assert ROOT_HZ["C4"] == pytest.approx(261.6256, abs=1e-3)
    assert ROOT_HZ["F4"] / ROOT_HZ["E4"] == pytest.approx(2 ** (1 / 12))


def test_bad_classes_and_captions_are_refused():
    with pytest.raises(ValueError, match="kind"):
        tone_class_id("drum", "C4")
    with pytest.raises(ValueError, match="root"):
        tone_class_id("tone", "C5")
    with pytest.raises(ValueError, match="class_id"):
        tone_class_parts(28)
    with pytest.raises(ValueError, match="cannot parse caption"):
        parse_tone_caption("a C4 chirp")


# --- the tones ---------------------------------------------------------------------------------------

def _dominant_hz(audio_1T: torch.Tensor, sample_rate: int) -> float:
    spectrum = torch.fft.rfft(audio_1T[0].double() * torch.hann_window(audio_1T.shape[-1], dtype=torch.float64), n=1 << 16).abs()
    return float(spectrum.argmax()) * sample_rate / (1 << 16)


def test_plain_tones_sound_at_their_root_and_chords_hold_third_and_fifth():
    tone = render_tone("tone", "A4")
    assert tone.shape == (1, 16000) and tone.dtype == torch.float32
    assert _dominant_hz(tone, 16000) == pytest.approx(440.0, abs=1.0)
    chord = render_tone("major chord", "C4", sample_rate=8000, seconds=0.5)[0].double()
    assert chord.shape == (4000,)
    spectrum = torch.fft.rfft(chord * torch.hann_window(4000, dtype=torch.float64), n=1 << 16).abs()
    freqs = torch.arange(len(spectrum)) * 8000 / (1 << 16)

    def level(hz: float) -> float:
        return float(spectrum[(freqs - hz).abs() < 3].max())

    root = level(ROOT_HZ["C4"])
    assert level(ROOT_HZ["E4"]) > 0.5 * root and level(ROOT_HZ["G4"]) > 0.5 * root
    assert level(ROOT_HZ["D4"]) < 0.05 * root  # no partial between root and third


def test_tones_are_deterministic_and_splits_differ():
    train = TonesDataset(length=56, seed=3)
    again = TonesDataset(length=56, seed=3)
    batch = train.batch([0, 5, 40])
    assert torch.equal(batch["audio"], again.batch([0, 5, 40])["audio"])
    assert torch.equal(batch["audio"][1], train[5]["audio"])  # items don't depend on the batch
    assert not torch.equal(train[5]["audio"], TonesDataset(length=56, seed=3, split="heldout")[5]["audio"])
    assert not torch.equal(train[5]["audio"], TonesDataset(length=56, seed=4)[5]["audio"])
    assert not torch.equal(train[5]["audio"], train[33]["audio"])  # same class, new jitter


def test_tone_items_shapes_range_and_labels():
    data = TonesDataset(length=30, sample_rate=8000, seconds=0.5)
    assert data.modality == "audio" and data.sample_rate == 8000 and len(data) == 30
    batch = data.batch(range(30))
    assert batch["audio"].shape == (30, 1, 4000) and batch["audio"].dtype == torch.float32
    assert batch["class_id"].dtype == torch.long and batch["class_id"].tolist() == [i % 28 for i in range(30)]
    assert batch["caption"] == [tone_caption(i % 28) for i in range(30)]
    peaks = batch["audio"].abs().amax(-1).flatten()
    assert float(peaks.min()) >= 0.28 and float(peaks.max()) <= 0.95
    item = data[29]
    assert set(item) == {"audio", "class_id", "caption"} and item["class_id"] == 1 and item["audio"].shape == (1, 4000)
    with pytest.raises(IndexError):
        data[30]


@pytest.mark.parametrize("kind, octaves", [("rising chirp", 1.0), ("falling chirp", -1.0), ("tone", 0.0)])
def test_chirps_sweep_one_octave_from_their_root(kind, octaves):
    audio_T = render_tone(kind, "G4", rng=np.random.default_rng(0))[0]
    early, late = (_dominant_hz(audio_T[None, start:start + 2000], 16000) for start in (1000, 13000))  # 0.125 s, 0.875 s
    assert early == pytest.approx(ROOT_HZ["G4"] * 2.0 ** (octaves * 0.125), rel=0.03)
    assert late == pytest.approx(ROOT_HZ["G4"] * 2.0 ** (octaves * 0.875), rel=0.03)


def test_tones_dataset_refuses_bad_arguments():
    with pytest.raises(ValueError, match="length"):
        TonesDataset(length=0)
    with pytest.raises(ValueError, match="split"):
        TonesDataset(length=4, split="test")
    with pytest.raises(ValueError, match="sample_rate must be a positive int, got 0"):
        TonesDataset(length=4, sample_rate=0)
    with pytest.raises(ValueError, match="seconds"):
        TonesDataset(length=4, seconds=0.0)


# --- resampling --------------------------------------------------------------------------------------

def test_resample_keeps_pitch_and_length_over_leading_axes():
    tone = render_tone("tone", "A4")  # [1, 16000]
    up = resample(tone[None].expand(2, 1, -1), orig_rate=16000, target_rate=24000)
    assert up.shape == (2, 1, 24000) and up.dtype == torch.float32
    assert _dominant_hz(up[0], 24000) == pytest.approx(440.0, abs=1.0)
    assert resample(tone, orig_rate=16000, target_rate=16000) is tone
    with pytest.raises(ValueError, match="target_rate must be a positive int"):
        resample(tone, orig_rate=16000, target_rate=0)
    with pytest.raises(TypeError, match="audio must be a float tensor"):
        resample(torch.zeros(10, dtype=torch.long), orig_rate=8000, target_rate=16000)


# --- speech ------------------------------------------------------------------------------------------

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs the Debian package espeak-ng")


@needs_espeak
def test_speech_clips_are_loud_speech_at_the_requested_rate_and_length():
    clips = SpeechClips(sample_rate=24000, seconds=0.75)
    assert clips.modality == "audio" and clips.sample_rate == 24000 and len(clips) == 12 * 4 * 2
    batch = clips.batch([0, 13, 12 * 4 + 2])  # three sentences, three voices, both speeds
    assert batch["audio"].shape == (3, 1, 18000) and batch["audio"].dtype == torch.float32
    assert batch["class_id"].tolist() == [-1, -1, -1]
    assert batch["caption"] == [clips.sentences[0], clips.sentences[1], clips.sentences[2]]
    assert clips.parts(13) == (clips.sentences[1], clips.voices[1], clips.speeds[0])
    peaks = batch["audio"].abs().amax(-1).flatten()
    assert torch.allclose(peaks, torch.full((3,), 0.7), atol=1e-4)
    frame_rms = batch["audio"][:, 0].unfold(-1, 480, 480).pow(2).mean(-1).sqrt()  # 20 ms frames
    assert float((frame_rms > 0.01).float().mean()) > 0.6  # mostly speech, not the silence around it
    assert torch.equal(clips[13]["audio"], SpeechClips(sample_rate=24000, seconds=0.75)[13]["audio"])  # deterministic


def test_speech_clips_without_espeak_say_what_to_install(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="Debian package espeak-ng"):
        SpeechClips()


# --- folders -----------------------------------------------------------------------------------------

def test_audio_folder_mixes_down_resamples_and_cuts_clips(tmp_path):
    t = np.arange(8000 * 5 // 2) / 8000  # 2.5 s at 8 kHz
    left, right = 0.5 * np.sin(2 * np.pi * 440 * t), 0.1 * np.ones_like(t)
    (tmp_path / "sub").mkdir()
    soundfile.write(tmp_path / "sub" / "b.wav", np.stack([left, right], axis=1), 8000)  # stereo
    soundfile.write(tmp_path / "a.flac", 0.3 * np.sin(2 * np.pi * 220 * np.arange(16000 * 14 // 10) / 16000), 16000)  # 1.4 s
    (tmp_path / "notes.txt").write_text("not audio")
    folder = AudioFolder(tmp_path, sample_rate=16000, seconds=1.0)
    assert folder.modality == "audio" and folder.sample_rate == 16000
    assert [p.name for p in folder.paths] == ["a.flac", "b.wav"]
    assert len(folder) == 1 + 3  # a: 1.4 s keeps one clip (0.4 s < half a clip is dropped); b: 2.5 s gives 3
    batch = folder.batch(range(4))
    assert batch["audio"].shape == (4, 1, 16000) and batch["class_id"].tolist() == [-1] * 4 and batch["caption"] == [""] * 4
    mono = batch["audio"][1, 0, 2000:14000].double()
    assert float(mono.mean()) == pytest.approx(0.05, abs=0.01)  # the mean of the channels: the right one's 0.1 / 2
    assert _dominant_hz(batch["audio"][1], 16000) == pytest.approx(440.0, abs=1.0)  # pitch kept through resampling
    assert float(batch["audio"][3, 0, 8200:].abs().max()) == 0.0  # the last half clip is zero-padded


def test_audio_folder_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        AudioFolder(tmp_path / "missing")
    (tmp_path / "readme.txt").write_text("hello")
    with pytest.raises(ValueError, match="holds no audio files"):
        AudioFolder(tmp_path)
    (tmp_path / "broken.wav").write_bytes(b"RIFF not really a wav file")
    with pytest.raises(ValueError, match="broken.wav"):
        AudioFolder(tmp_path)
    (tmp_path / "broken.wav").unlink()
    soundfile.write(tmp_path / "short.wav", np.zeros(4000), 16000)  # 0.25 s: less than half a clip
    with pytest.raises(ValueError, match="no clip"):
        AudioFolder(tmp_path)
