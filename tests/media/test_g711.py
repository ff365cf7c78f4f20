"""G.711: a tone through encode/decode keeps its frequency and level (within the codec's ~38 dB
SNR), PCMU <-> PCMA transcoding keeps the tone and equals decode-then-encode, silence frames."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from bridge.media import g711

from .audio import SILENT, dominant, level_at, samples, tone, tones_in

LAWS = [g711.PCMU, g711.PCMA]


@pytest.mark.parametrize("pt", LAWS)
@pytest.mark.parametrize("freq", [440, 1000, 2000, 3000])
def test_a_tone_keeps_its_frequency_and_level(pt: int, freq: int) -> None:
    pcm = tone(freq, 0.5)
    payload = g711.encode(pcm, pt)
    assert len(payload) == len(pcm) // 2
    out = g711.decode(payload, pt)
    assert len(out) == len(pcm)
    assert dominant(out) == {freq}
    assert abs(level_at(out, freq) - level_at(pcm, freq)) < 0.2
    others = {440, 1000, 2000, 3000} - {freq}
    assert all(level_at(out, f) < SILENT for f in others)
    error = samples(out) - samples(pcm)
    snr = 20 * np.log10(np.std(samples(pcm)) / np.std(error))
    assert snr > 35  # G.711's quantization at -12 dBFS is ~38-40 dB


@pytest.mark.parametrize("pt", LAWS)
def test_quiet_and_loud_tones_survive(pt: int) -> None:
    for amplitude in (300, 32000):  # -41 and -0.2 dBFS
        pcm = tone(1000, 0.25, amplitude=amplitude)
        out = g711.decode(g711.encode(pcm, pt), pt)
        level = level_at(pcm, 1000)
        # quantization products stay more than 30 dB under the tone at either end
        assert dominant(out, threshold=level - 30) == {1000}
        assert abs(level_at(out, 1000) - level) < 0.5


@pytest.mark.parametrize(("a", "b"), [(g711.PCMU, g711.PCMA), (g711.PCMA, g711.PCMU)])
def test_transcode_keeps_the_tone_and_equals_decode_then_encode(a: int, b: int) -> None:
    pcm = tone(440, 0.5)
    there = g711.transcode(g711.encode(pcm, a), a, b)
    assert there == g711.encode(g711.decode(g711.encode(pcm, a), a), b)
    back = g711.decode(g711.transcode(there, b, a), a)
    assert tones_in(back) == {440}
    assert dominant(back) == {440}
    assert abs(level_at(back, 440) - level_at(pcm, 440)) < 0.3


def test_transcode_is_exact_for_every_code() -> None:
    every = bytes(range(256))
    for a, b in [(g711.PCMU, g711.PCMA), (g711.PCMA, g711.PCMU)]:
        assert g711.transcode(every, a, b) == g711.encode(g711.decode(every, a), b)


def test_same_law_is_passed_through() -> None:
    payload = bytes(range(160))
    assert g711.transcode(payload, g711.PCMU, g711.PCMU) is payload
    assert g711.transcode(payload, g711.PCMA, g711.PCMA) is payload


@pytest.mark.parametrize("pt", LAWS)
def test_silence_frames(pt: int) -> None:
    frame = g711.SILENCE[pt]
    assert len(frame) == g711.FRAME_SAMPLES == 160
    # A-law has no zero code: its silence decodes to +-8, -72 dBFS
    assert max(abs(s) for s in samples(g711.decode(frame, pt))) <= 8
    assert len(g711.LINEAR_SILENCE) == g711.FRAME_BYTES == 320
    assert g711.SILENCE[g711.PCMU] == b"\xff" * 160
    assert g711.SILENCE[g711.PCMA] == b"\xd5" * 160


def test_other_payload_types_are_refused() -> None:
    with pytest.raises(g711.UnsupportedCodec) as refused:
        g711.decode(b"\x00", 9)
    assert refused.value.pt == 9
    with pytest.raises(g711.UnsupportedCodec):
        g711.encode(b"\x00\x00", 101)
    with pytest.raises(g711.UnsupportedCodec):
        g711.transcode(b"\x00", g711.PCMU, 18)
    with pytest.raises(g711.UnsupportedCodec):
        g711.transcode(b"\x00", 3, 3)
    assert isinstance(refused.value, ValueError)


def test_importing_the_codec_leaks_no_deprecation_warning() -> None:
    """In a fresh interpreter (a reload here would swap the module under other tests)."""
    run = subprocess.run(
        [sys.executable, "-W", "error", "-c", "import bridge.media.g711, bridge.media.mixer"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""
