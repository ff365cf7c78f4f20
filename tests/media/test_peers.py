"""The real media peers of tests/media/peers.py, checked against each other, without the bridge:
SIPp plays our pcaps (a socket of the test receives them and an FFT hears the tone), SIPp calls
SIPp, two baresip phones hear each other's tone and DTMF, baresip registers and hears SIPp."""

from __future__ import annotations

import re
import struct
import time
from pathlib import Path

import pytest

from tests.media.audio import RATE, SILENT, dominant, level_at, read_wav, tones_in
from tests.media.peers import (
    PCMA,
    PCMU,
    TELEPHONE_EVENT,
    BaresipPhone,
    RtpSink,
    describe,
    dtmf_pcap,
    needs_baresip,
    needs_raw_socket,
    needs_sipp,
    parse_rtp,
    read_pcap,
    rtp_audio,
    run_sipp,
    sipp_process,
    telephone_events,
    tone_pcap,
)
from tests.sip.peers import SCENARIOS as SIP_SCENARIOS

TALK = 3.0  # seconds of a baresip call


def sipp_steps(messages: str) -> list[str]:
    """The start lines of a SIPp -trace_msg, in order, without UDP retransmissions."""
    lines = [
        line.split(" sip:")[0]
        for line in messages.splitlines()
        if line.startswith(("SIP/2.0 ", "INVITE ", "ACK ", "BYE "))
    ]
    return [line for i, line in enumerate(lines) if i == 0 or line != lines[i - 1]]


# --- the pcaps, as files ---


@pytest.mark.parametrize(("codec", "payload_type"), [("PCMU", PCMU), ("PCMA", PCMA)])
def test_tone_pcap_holds_paced_g711_rtp_of_the_tone(
    tmp_path: Path, codec: str, payload_type: int
) -> None:
    run = tone_pcap(tmp_path / "tone.pcap", 1000, 1.0, codec, ssrc=0xABCD, sequence=65530)
    records = read_pcap(tmp_path / "tone.pcap")
    assert run.packets == len(records) == 50
    assert [round(at, 6) for at, _ in records] == [round(i * 0.02, 6) for i in range(50)]
    packets = [parse_rtp(payload) for _, payload in records]
    assert {(p.payload_type, p.ssrc, len(p.payload)) for p in packets} == {
        (payload_type, 0xABCD, 160)
    }
    assert [p.marker for p in packets] == [True] + [False] * 49
    assert [p.sequence for p in packets] == [(65530 + i) % 65536 for i in range(50)]  # wraps
    assert [p.timestamp for p in packets] == [i * 160 for i in range(50)]
    assert (run.next_sequence, run.next_timestamp) == (65580, 8000)
    pcm = rtp_audio(packets)
    assert len(pcm) == 2 * RATE
    assert dominant(pcm) == {1000}


def test_dtmf_pcap_holds_rfc4733_presses(tmp_path: Path) -> None:
    run = dtmf_pcap(tmp_path / "dtmf.pcap", "1#", ssrc=7, sequence=100, timestamp=8000)
    records = read_pcap(tmp_path / "dtmf.pcap")
    packets = [parse_rtp(payload) for _, payload in records]
    assert {(p.payload_type, p.ssrc) for p in packets} == {(TELEPHONE_EVENT, 7)}
    assert [p.sequence for p in packets] == list(range(100, 100 + len(packets)))
    assert run.packets == len(packets) == 2 * (5 + 3)  # 100 ms: 5 updates, then 3 ends
    first, second = packets[:8], packets[8:]
    for press, event, start in ((first, 1, 8000), (second, 11, 8000 + round(0.24 * RATE))):
        fields = [struct.unpack("!BBH", p.payload) for p in press]
        assert {p.timestamp for p in press} == {start}  # the press's start, in every packet
        assert [p.marker for p in press] == [True] + [False] * 7
        assert [f[0] for f in fields] == [event] * 8
        assert [bool(f[1] & 0x80) for f in fields] == [False] * 5 + [True] * 3  # E bit
        assert [f[1] & 0x3F for f in fields] == [10] * 8  # volume
        assert [f[2] for f in fields] == [160, 320, 480, 640, 800, 800, 800, 800]
    times = [round(at, 3) for at, _ in records]
    assert times[:8] == [round(i * 0.02, 3) for i in range(8)]
    assert times[8] == 0.24  # 8 packets 20 ms apart, then 100 ms of nothing
    assert telephone_events(packets) == "1#"


# --- SIPp plays them ---


@needs_sipp
@needs_raw_socket
@pytest.mark.parametrize(("codec", "payload_type"), [("PCMU", PCMU), ("PCMA", PCMA)])
def test_sipp_plays_a_tone_pcap(tmp_path: Path, codec: str, payload_type: int) -> None:
    """SIPp's play_pcap_audio sends our pcap, paced, to the answer's media address: a socket of
    the test, where the FFT hears the tone."""
    tone_pcap(tmp_path / "tone.pcap", 1000, 2.0, codec)
    with (
        RtpSink() as sink,
        sipp_process(tmp_path, "uas_sink.xml", None, "-key", "rtp_port", str(sink.port)) as uas,
        sipp_process(
            tmp_path, "uac_pcap.xml", uas.address,
            "-key", "pcap", str(tmp_path / "tone.pcap"), "-s", "phone", "-d", "2500",
        ) as uac,
    ):  # fmt: skip
        sink.collect(5.0, until=100)  # as it comes: the arrival times tell the pacing
        caller, answered = uac.wait(10), uas.wait(5)
    assert caller.returncode == 0, describe(caller)
    assert answered.returncode == 0, describe(answered)
    assert sipp_steps(caller.messages) == [
        "INVITE", "SIP/2.0 180 Ringing", "SIP/2.0 200 OK", "ACK", "BYE", "SIP/2.0 200 OK"
    ]  # fmt: skip

    packets = [parse_rtp(p) for p in sink.packets]
    assert len(packets) == 100
    assert {p.payload_type for p in packets} == {payload_type}
    assert [p.sequence for p in packets] == list(range(1000, 1100))
    gaps = [b - a for a, b in zip(sink.arrivals, sink.arrivals[1:], strict=False)]
    assert 1.9 < sink.arrivals[-1] - sink.arrivals[0] < 2.3  # paced as captured, no burst
    assert sorted(gaps)[len(gaps) // 2] == pytest.approx(0.02, abs=0.002)
    pcm = rtp_audio(packets)
    assert tones_in(pcm, (440, 1000, 2000)) == {1000}
    assert level_at(pcm, 1000) == pytest.approx(-12.0, abs=1.0)


@needs_sipp
@needs_raw_socket
def test_sipp_plays_a_tone_then_dtmf(tmp_path: Path) -> None:
    tone = tone_pcap(tmp_path / "tone.pcap", 440, 1.0)
    dtmf_pcap(
        tmp_path / "dtmf.pcap", "159#", ssrc=tone.ssrc, sequence=tone.next_sequence,
        timestamp=tone.next_timestamp + round(0.2 * RATE),  # the pause after the tone
    )  # fmt: skip
    with (
        RtpSink() as sink,
        sipp_process(tmp_path, "uas_sink.xml", None, "-key", "rtp_port", str(sink.port)) as uas,
    ):
        caller = run_sipp(
            tmp_path, "uac_pcap_dtmf.xml", uas.address,
            "-key", "pcap", str(tmp_path / "tone.pcap"),
            "-key", "dtmf_pcap", str(tmp_path / "dtmf.pcap"), "-s", "phone", "-d", "1200",
        )  # fmt: skip
        assert caller.returncode == 0, describe(caller)
        sink.collect(1.0, until=50 + 4 * 8)
        assert uas.wait(5).returncode == 0
    packets = [parse_rtp(p) for p in sink.packets]
    assert [p.payload_type for p in packets] == [PCMU] * 50 + [TELEPHONE_EVENT] * 32
    assert [p.sequence for p in packets] == list(range(1000, 1082))  # one stream
    assert telephone_events(packets) == "159#"
    assert dominant(rtp_audio(packets)) == {440}


@needs_sipp
@needs_raw_socket
@pytest.mark.parametrize("scenario", ["uac_pcap.xml", "uac_pcap_dtmf.xml"])
def test_sipp_calls_sipp_that_echoes(tmp_path: Path, scenario: str) -> None:
    """The caller's scenarios against the phone side with -rtp_echo: the calls complete."""
    tone_pcap(tmp_path / "tone.pcap", 440, 0.5)
    dtmf_pcap(tmp_path / "dtmf.pcap", "1")
    with sipp_process(tmp_path, "uas_echo.xml", None, "-rtp_echo") as uas:
        caller = run_sipp(
            tmp_path, scenario, uas.address,
            "-key", "pcap", str(tmp_path / "tone.pcap"),
            "-key", "dtmf_pcap", str(tmp_path / "dtmf.pcap"), "-s", "phone", "-d", "600",
        )  # fmt: skip
        answered = uas.wait(5)
    assert caller.returncode == 0, describe(caller)
    assert answered.returncode == 0, describe(answered)
    assert sipp_steps(answered.messages) == [
        "INVITE", "SIP/2.0 180 Ringing", "SIP/2.0 200 OK", "ACK", "BYE", "SIP/2.0 200 OK"
    ]  # fmt: skip
    assert "m=audio" in answered.messages and "RTP/AVP 0 8 101" in answered.messages


# --- baresip ---


@needs_baresip
def test_two_baresip_phones_hear_each_other(tmp_path: Path) -> None:
    with (
        BaresipPhone(tmp_path, "a", tone=440) as a,
        BaresipPhone(tmp_path, "b", tone=1000, auto_answer=True) as b,
    ):
        a.dial(b.uri)
        a.wait_call_established()
        b.wait_call_established()
        time.sleep(TALK)
        a.hangup()
        a.wait_closed()
        assert b.wait_closed()["param"] == "Connection reset by peer"  # a's BYE
        heard_by_a, heard_by_b = a.received_audio(), b.received_audio()
        sent_by_a = read_wav(a.sent_wav())[1][0]
    for heard in (heard_by_a, heard_by_b):
        assert TALK - 0.5 < len(heard) / 2 / RATE < TALK + 1.0
    assert tones_in(heard_by_a, (440, 1000)) == {1000}
    assert level_at(heard_by_a, 440) < SILENT
    assert tones_in(heard_by_b, (440, 1000)) == {440}
    assert level_at(heard_by_b, 1000) < SILENT
    assert dominant(sent_by_a) == {440}  # what a sent, before encoding


@needs_baresip
def test_baresip_dtmf_reaches_the_other_phone(tmp_path: Path) -> None:
    with (
        BaresipPhone(tmp_path, "a", tone=440) as a,
        BaresipPhone(tmp_path, "b", tone=1000) as b,  # answers by hand
    ):
        a.dial(b.uri)
        incoming = b.wait_incoming()
        assert incoming["peeruri"] == a.uri
        b.answer()
        a.wait_call_established()
        b.wait_call_established()
        time.sleep(0.5)
        a.send_dtmf("159*#")
        assert b.wait_dtmf("159*#") == "159*#"
        b.wait_event("CALL_DTMF_END", count=5)  # each press ended too
        assert a.dtmf_received() == ""
        b.hangup()
        assert a.wait_closed()["param"] == "Connection reset by peer"
    assert "a=rtpmap:101 telephone-event/8000" in a.output()  # the offer a sent (-s trace)


@needs_baresip
@needs_sipp
def test_baresip_registers_to_a_registrar(tmp_path: Path) -> None:
    """Registration with digest (SIPp as the registrar: 401, then 200 for the right password)."""
    registrar = SIP_SCENARIOS / "provider_registrar.xml"
    with (
        sipp_process(tmp_path, registrar, None) as uas,
        BaresipPhone(
            tmp_path, "a", tone=440, registrar=uas.address, username="bridge-acct",
            password="trunk-secret",
        ) as phone,
    ):  # fmt: skip
        phone.wait_registered(5)
        result = uas.wait(5)
    assert result.returncode == 0, describe(result)
    assert result.count("REGISTER sip:") == 2 and result.count("SIP/2.0 200 OK") == 1
    assert 'username="bridge-acct"' in result.messages


@needs_baresip
@needs_sipp
@needs_raw_socket
def test_baresip_hears_a_pcap_sipp_plays(tmp_path: Path) -> None:
    """SIPp calls a baresip phone that takes PCMA only and plays it an A-law 2 kHz pcap."""
    tone_pcap(tmp_path / "tone.pcap", 2000, 2.0, "PCMA")
    with BaresipPhone(tmp_path, "b", tone=440, auto_answer=True, codecs=("PCMA",)) as b:
        caller = run_sipp(
            tmp_path, "uac_pcap.xml", f"127.0.0.1:{b.port}",
            "-key", "pcap", str(tmp_path / "tone.pcap"), "-s", "b", "-d", "2300",
        )  # fmt: skip
        assert caller.returncode == 0, describe(caller)
        b.wait_closed()
        heard = b.received_audio()
    offered_and_answered = set(re.findall(r"m=audio \d+ RTP/AVP ([\d ]+)", caller.messages))
    assert offered_and_answered == {"0 8 101", "8 101"}  # b: PCMA and telephone-event
    assert tones_in(heard, (440, 1000, 2000)) == {2000}
