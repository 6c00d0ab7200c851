"""Write a short synthetic song for the demo: drums (kick, snare and hi-hat noise bursts), a bass
line (sine with harmonics) and a "vocal" (a glottal-like buzz through vowel formants, with
vibrato), 120 bpm, stereo, 44.1 kHz wav.

    python scripts/sample_clip.py OUT.wav [--seconds 10]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import soundfile as sf

RATE = 44100
BEAT = 0.5  # seconds per beat at 120 bpm
BASS_NOTES = [55.0, 55.0, 73.42, 65.41]  # A1 A1 D2 C2, one per bar
MELODY = [220.0, 246.94, 261.63, 293.66, 261.63, 246.94, 220.0, 196.0]  # one per two beats
VOWELS = [(730, 1090, 2440), (270, 2290, 3010), (570, 840, 2410)]  # a, i, u formants (Hz)


def _envelope(length: int, attack: float, decay: float) -> np.ndarray:
    t = np.arange(length) / RATE
    return np.minimum(t / attack, 1.0) * np.exp(-t / decay)


def drums(frames: int, rng: np.random.Generator) -> np.ndarray:
    out = np.zeros(frames)
    for beat in range(int(frames / RATE / BEAT) + 1):
        start = int(beat * BEAT * RATE)
        if start >= frames:
            break
        # kick on every beat: a falling sine thump
        n = min(int(0.25 * RATE), frames - start)
        t = np.arange(n) / RATE
        out[start : start + n] += (
            0.9 * np.sin(2 * np.pi * (50 + 90 * np.exp(-t * 30)) * t) * (np.exp(-t * 12))
        )
        # snare on beats 2 and 4: a noise burst
        if beat % 2 == 1:
            n = min(int(0.18 * RATE), frames - start)
            out[start : start + n] += 0.5 * rng.standard_normal(n) * _envelope(n, 0.001, 0.05)
        # hi-hat on every half beat: a short, bright burst
        for half in (0, 1):
            at = start + int(half * BEAT / 2 * RATE)
            n = min(int(0.05 * RATE), frames - at)
            if n > 0:
                noise = np.diff(rng.standard_normal(n + 1))  # differencing tilts it bright
                out[at : at + n] += 0.15 * noise * _envelope(n, 0.0005, 0.015)
    return out


def bass(frames: int) -> np.ndarray:
    t = np.arange(frames) / RATE
    bar = (t // (4 * BEAT)).astype(int) % len(BASS_NOTES)
    freq = np.asarray(BASS_NOTES)[bar]
    phase = 2 * np.pi * np.cumsum(freq) / RATE
    note_t = t % BEAT  # re-attack every beat
    return 0.45 * (np.sin(phase) + 0.3 * np.sin(2 * phase)) * np.exp(-note_t * 3)


def vocal(frames: int) -> np.ndarray:
    t = np.arange(frames) / RATE
    step = (t // (2 * BEAT)).astype(int)
    freq = np.asarray(MELODY)[step % len(MELODY)] * (1 + 0.01 * np.sin(2 * np.pi * 5.5 * t))
    phase = 2 * np.pi * np.cumsum(freq) / RATE
    out = np.zeros(frames)
    vowel = np.asarray(VOWELS)[step % len(VOWELS)]
    for harmonic in range(1, 30):
        partial = harmonic * freq
        gain = np.zeros(frames)
        for k in range(3):  # resonance of each formant at this partial's frequency
            gain += 1.0 / (1.0 + ((partial - vowel[:, k]) / (80.0 + 40 * k)) ** 2) / (k + 1)
        out += gain * np.sin(harmonic * phase) / harmonic**0.5
    phrase = np.clip(np.sin(np.pi * (t % (2 * BEAT)) / (2 * BEAT)) * 1.5, 0, 1)
    return 0.25 * out / np.max(np.abs(out)) * phrase


def song(seconds: float, seed: int = 7) -> np.ndarray:
    """float32 [frames, 2]: drums in the middle, bass slightly left, vocal slightly right."""
    frames = int(seconds * RATE)
    rng = np.random.default_rng(seed)
    d, b, v = drums(frames, rng), bass(frames), vocal(frames)
    left = d + 0.6 * b + 0.4 * v
    right = d + 0.4 * b + 0.6 * v
    mix = np.stack([left, right], axis=1)
    return (0.8 * mix / np.max(np.abs(mix))).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    sf.write(str(args.out), song(args.seconds), RATE, subtype="PCM_16")
    print(f"wrote {args.out} ({args.seconds:g} s: drums, bass and a synthetic vocal)")


if __name__ == "__main__":
    main()
