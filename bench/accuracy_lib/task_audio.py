"""Basic Pitch: output correlation of INT8 against FP32 on one clip."""

from __future__ import annotations

import os

import numpy as np
import onnx

from .tasks import Column, TaskEntry, pearson

BP_RATE = 22050
BP_WINDOW = 43844
BP_PAD = 3840                  # Basic Pitch's half overlap: 30 frames of 256 samples / 2
BP_HOP = BP_WINDOW - 2 * BP_PAD
BP_OUTPUTS = {"contour": "StatefulPartitionedCall:0", "note": "StatefulPartitionedCall:1",
              "onset": "StatefulPartitionedCall:2"}


def read_wave_mono(path: str) -> tuple[np.ndarray, int]:
    """A PCM WAV file (standard library ``wave``) as float64 mono in -1..1, and its rate."""
    import wave

    with wave.open(path, "rb") as w:
        channels, width, rate = w.getnchannels(), w.getsampwidth(), w.getframerate()
        raw = w.readframes(w.getnframes())
    if width == 1:
        a = (np.frombuffer(raw, np.uint8).astype(np.float64) - 128) / 128
    elif width in (2, 4):
        dtype = np.int16 if width == 2 else np.int32
        a = np.frombuffer(raw, dtype).astype(np.float64) / (2 ** (8 * width - 1))
    else:
        raise ValueError(f"{path}: {8 * width}-bit samples are not read here")
    return a.reshape(-1, channels).mean(axis=1), rate


def basic_pitch_windows(audio: np.ndarray) -> np.ndarray:
    """Basic Pitch's framing: BP_PAD zeros before the audio, windows of BP_WINDOW samples
    every BP_HOP (the last one padded with zeros): [windows, BP_WINDOW, 1] float32."""
    padded = np.concatenate([np.zeros(BP_PAD), audio])
    count = int(np.ceil(len(padded) / BP_HOP))
    padded = np.concatenate([padded, np.zeros(count * BP_HOP + BP_WINDOW - len(padded))])
    return np.stack([padded[i * BP_HOP:i * BP_HOP + BP_WINDOW]
                     for i in range(count)])[..., None].astype(np.float32)


def f1_active(a: np.ndarray, b: np.ndarray, threshold: float) -> float:
    x, y = a >= threshold, b >= threshold
    total = x.sum() + y.sum()
    return float(2 * (x & y).sum() / total) if total else float("nan")


def basic_pitch_front_end(model: onnx.ModelProto) -> list[str]:
    """Basic Pitch's CQT (Conv1d on the waveform, magnitude) and log-normalisation nodes."""
    return [n.name for n in model.graph.node
            if "/cq_t2010v2_1/" in n.name or "/normalized_log_1/" in n.name]


def basic_pitch_entry(zoo: str) -> TaskEntry:
    path = os.path.join(zoo, "basic_pitch", "vocadito_10.wav")
    audio, rate = read_wave_mono(path)
    notes = []
    if rate == 2 * BP_RATE:
        audio = audio[:len(audio) // 2 * 2].reshape(-1, 2).mean(axis=1)
        how = "resampled 44.1 → 22.05 kHz by averaging sample pairs (no scipy here)"
    elif rate == BP_RATE:
        how = "at 22.05 kHz already"
    else:
        raise ValueError(f"{path}: {rate} Hz; this script resamples 44.1 kHz only")
    x = basic_pitch_windows(audio)
    half = len(x) // 2
    seconds = len(audio) / BP_RATE

    def score(fp32: dict[str, np.ndarray], q: dict[str, np.ndarray]) -> dict[str, float]:
        out = {}
        for key, name in BP_OUTPUTS.items():
            out[f"{key}_r"] = pearson(fp32[name], q[name])
            out[f"{key}_max"] = float(np.abs(fp32[name] - q[name]).max())
        out["note_f1"] = f1_active(fp32[BP_OUTPUTS["note"]], q[BP_OUTPUTS["note"]], 0.3)
        out["onset_f1"] = f1_active(fp32[BP_OUTPUTS["onset"]], q[BP_OUTPUTS["onset"]], 0.5)
        return out
    notes.append(
        f"Basic Pitch: vocadito_10.wav ({seconds:.1f} s) read with `wave`, mono, {how}; framed as Basic "
        f"Pitch does: {BP_PAD} zeros first, windows of {BP_WINDOW} samples every {BP_HOP} "
        f"({BP_WINDOW} − 2 × {BP_PAD}), the last padded with zeros: {len(x)} windows. "
        "Outputs: `StatefulPartitionedCall:0` contour, `:1` note, `:2` onset (Basic Pitch's "
        "own mapping). Note F1 and onset F1: cells (frame × pitch) at or above Basic Pitch's "
        "default thresholds (note 0.3, onset 0.5), INT8's against FP32's.")
    return TaskEntry(
        name="Basic Pitch (nmp)", group="audio",
        path=os.path.join(zoo, "basic_pitch", "nmp.onnx"),
        calibration=x[:half], evaluation=x[half:],
        calibration_description=f"windows 0–{half - 1} (the first half of the clip)",
        evaluation_description=f"windows {half}–{len(x) - 1} (the second half; the first "
                               f"of them shares {2 * BP_PAD} samples with the last "
                               "calibration window)",
        score=score, notes=notes,
        variants=[("CQT front end in float", basic_pitch_front_end)])


AUDIO_COLUMNS = [
    Column("contour_r", "contour r", "{:.5f}"),
    Column("note_r", "note r", "{:.5f}"),
    Column("onset_r", "onset r", "{:.5f}"),
    Column("contour_max", "contour max abs diff", "{:.4f}"),
    Column("note_max", "note max abs diff", "{:.4f}"),
    Column("onset_max", "onset max abs diff", "{:.4f}"),
    Column("note_f1", "note F1 (≥ 0.3)", "{:.3f}"),
    Column("onset_f1", "onset F1 (≥ 0.5)", "{:.3f}"),
]
