"""Anchored SIP calls with real peers, heard as audio: a `bridge run` process, baresip phones
(the caller on the trunk, the agent's and the supervisor's desk phones registered with digest)
each playing its own tone, and SIPp playing G.711 and RFC 4733 pcaps. What each baresip heard
(its decoded stream, `sndfile`) and what the bridge recorded go through an FFT.

- listen and whisper through `POST /api/v1/calls/{id}/monitor` with `via: ip_phone`, a live
  switch by PATCH and a BYE at DELETE; the call's recording (caller left, agent right);
- voicemail over SIP: the greeting, the beep, the caller's tone recorded until `#`, listed
  through `/api/v1/voicemails`;
- press 1 on a forwarded leg through the trunk: `1` bridges it, `2` does not.
"""

from __future__ import annotations

import json
import sqlite3
import time
import urllib.request
import wave
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sim.phones.inproc import ha1

from bridge.media import g711
from tests.media.audio import tone as make_tone
from tests.media.audio import tones_in
from tests.media.peers import (
    PCMU,
    BaresipPhone,
    build_rtp,
    describe,
    g711_encode,
    needs_baresip,
    needs_raw_socket,
    needs_sipp,
    run_sipp,
    sipp_process,
    tone_pcap,
    write_pcap,
)
from tests.sip.certs import issue
from tests.sip.peers import REALM, RunningBridge, free_port, trunk_bridge
from tests.sip.test_anchored_media import directory as anchored_directory

LINE = "+15550100"
CALLER, AGENT, SUPERVISOR = 440.0, 1000.0, 2000.0
PROVIDER = 1500.0  # the forwarded number's phone (not 1 kHz: the voicemail beep)
TONES = [CALLER, AGENT, SUPERVISOR]

SAMPLES_PER_PACKET = 160


def desk_user(uid: str, username: str, password: str, **extra: Any) -> dict[str, Any]:
    """A desk-phone user whose HA1 is of the bridge process's realm."""
    return {
        "id": uid,
        "name": f"Desk {username}",
        "answer_by": "ip_phone",
        "sip": {"username": username, "ha1_md5": ha1(username, password, REALM)},
        **extra,
    }


def directory(**line: Any) -> dict[str, Any]:
    """The in-process tests' directory (ana rung, sam supervising), with HA1s of the bridge
    process's realm and `line` settings added to the line."""
    data = anchored_directory(desk=desk_user)
    data["lines"][0].update(line)
    return data


def desk_phone(
    tmp_path: Path,
    bridge: RunningBridge,
    user: str,
    password: str,
    tone: float,
    tls: tuple[int, Path] | None = None,
):
    """A baresip desk phone registered to the bridge; over TLS to (port, CA) with SRTP
    required (`mediaenc=srtp-mand`) when `tls` is given."""
    secure: dict[str, Any] = {}
    if tls is not None:
        secure = {"transport": "tls", "mediaenc": "srtp-mand", "cafile": tls[1]}
    return BaresipPhone(
        tmp_path,
        f"desk{user}",
        tone=tone,
        auto_answer=True,
        registrar=f"127.0.0.1:{tls[0] if tls else bridge.sip}",
        username=user,
        password=password,
        play_seconds=60,
        **secure,
    )


@contextmanager
def media_bridge(tmp_path: Path, data: dict[str, Any], secure: bool) -> Iterator[Any]:
    """`trunk_bridge`; with `secure`, also a TLS listener (a certificate from a CA made here)
    and SRTP required on calls over it. Yields (bridge, (TLS port, CA) or None)."""
    if not secure:
        with trunk_bridge(tmp_path, data) as bridge:
            yield bridge, None
        return
    issued = issue(tmp_path / "certs")
    port = free_port()
    with trunk_bridge(
        tmp_path,
        data,
        sip__tls__port=str(port),
        sip__tls__certificate=str(issued.certificate),
        sip__tls__private_key=str(issued.private_key),
        sip__tls__srtp="required",
    ) as bridge:
        yield bridge, (port, issued.ca)


def wait_for(check: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def download_wav(bridge: RunningBridge, url: str, user: str, path: Path) -> bytes:
    """GET the WAV through the API (as the user), check it is plain stereo 8 kHz 16-bit PCM,
    and return its frames."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{bridge.http}{url}",
        headers={"Authorization": f"Bearer {bridge.token(user)}"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.headers["Content-Type"].startswith("audio/")
        path.write_bytes(response.read())
    with wave.open(str(path)) as file:
        assert (file.getnchannels(), file.getframerate(), file.getsampwidth()) == (2, 8000, 2)
        return file.readframes(file.getnframes())


def stored_events(tmp_path: Path, call_id: str) -> list[tuple[str, dict[str, Any]]]:
    """(type, payload) of a call's events in the bridge process's outbox, in order."""
    db = sqlite3.connect(f"file:{tmp_path / 'var' / 'events.sqlite'}?mode=ro", uri=True)
    try:
        rows = db.execute(
            "SELECT type, payload FROM events WHERE call_id = ? ORDER BY seq", (call_id,)
        ).fetchall()
    finally:
        db.close()
    return [(kind, json.loads(payload)) for kind, payload in rows]


def stretch(pcm: bytes, start: float, end: float) -> bytes:
    """Seconds `start` to `end` of 8 kHz 16-bit mono audio."""
    return pcm[int(start * 16000) & ~1 : int(end * 16000) & ~1]


@needs_baresip
@pytest.mark.parametrize("secure", [False, True], ids=["udp-rtp", "tls-srtp"])
def test_listen_then_whisper_from_a_desk_phone_with_the_recording(
    tmp_path: Path, secure: bool
) -> None:
    """The desk phones over UDP with RTP, or over TLS with SRTP required (the caller on the
    trunk stays plain RTP: the bridge decrypts one side and encrypts the other)."""
    with (
        media_bridge(tmp_path, directory(), secure) as (bridge, tls),
        desk_phone(tmp_path, bridge, "201", "pw-201", AGENT, tls) as agent,
        desk_phone(tmp_path, bridge, "301", "pw-301", SUPERVISOR, tls) as supervisor,
        BaresipPhone(tmp_path, "caller", tone=CALLER, play_seconds=60) as caller,
    ):
        agent.wait_registered(timeout=10)
        supervisor.wait_registered(timeout=10)
        caller.dial(f"sip:{LINE}@127.0.0.1:{bridge.sip}")
        caller.wait_call_established(timeout=10)
        answered_at = time.monotonic()  # the agent's audio starts about here
        [live] = wait_for(lambda: bridge.api("/api/v1/calls"))
        call_id = live["call_id"]
        path = f"/api/v1/calls/{call_id}"
        status, body = bridge.request("POST", f"{path}/recording", {"action": "start"}, user="sam")
        assert status == 200, body
        status, body = bridge.request(
            "POST", f"{path}/monitor", {"mode": "listen", "via": "ip_phone"}, user="sam"
        )
        assert status == 201, body
        assert body["via"] == "ip_phone" and body["status"] == "dialing"
        supervisor.wait_call_established(timeout=10)
        joined = time.monotonic() - answered_at
        listed = bridge.api("/api/v1/calls")[0]
        assert listed["monitors"]["sam"]["status"] == "in-progress"
        assert listed["recording"]["status"] == "in-progress"
        time.sleep(3)
        status, body = bridge.request("PATCH", f"{path}/monitor", {"mode": "whisper"}, user="sam")
        assert status == 200, body
        switched = time.monotonic() - answered_at
        time.sleep(3)
        left = time.monotonic() - answered_at
        status, _ = bridge.request("DELETE", f"{path}/monitor", user="sam")
        assert status == 204
        supervisor.wait_closed(timeout=5)  # the bridge's BYE
        status, stopped = bridge.request(
            "POST", f"{path}/recording", {"action": "stop"}, user="sam"
        )
        assert status == 200 and stopped["status"] == "completed", stopped
        # listed and downloadable at once, while the call is still up
        recording = bridge.api(f"/api/v1/recordings/{stopped['recording_sid']}")
        assert recording["call_id"] == call_id and recording["status"] == "completed"
        frames = download_wav(bridge, recording["audio_url"], "sam", tmp_path / "recording.wav")
        assert bridge.api("/api/v1/calls")[0]["state"] == "answered"
        caller.hangup()
        caller.wait_closed(timeout=5)
        agent.wait_closed(timeout=5)
        if secure:  # (baresip's own libsrtp did the other half)
            for phone in (agent, supervisor):
                assert "SRTP is Enabled" in phone.output(), phone.output()[-2000:]
            assert "SRTP is Enabled" not in caller.output()

        heard_by_supervisor = supervisor.received_audio()
        assert tones_in(heard_by_supervisor, TONES) == {CALLER, AGENT}
        # the caller never heard the supervisor (listen, then whisper: the agent alone)
        assert tones_in(caller.received_audio(), TONES) == {AGENT}
        # the agent heard the supervisor only while whispered to (a fraction of a second
        # after the PATCH), not while they listened
        heard_by_agent = agent.received_audio()
        listening = stretch(heard_by_agent, joined + 0.5, switched - 0.2)
        whispering = stretch(heard_by_agent, switched + 0.4, left - 0.3)
        assert tones_in(listening, TONES) == {CALLER}
        assert tones_in(whispering, TONES) == {CALLER, SUPERVISOR}

        assert tones_in(g711.audioop.tomono(frames, 2, 1, 0), TONES) == {CALLER}
        # the right channel is what the caller heard: the agent, never the whisper
        assert tones_in(g711.audioop.tomono(frames, 2, 0, 1), TONES) == {AGENT}
        # the outbox has the controls as the state changes they made, in order
        controls = [
            (kind, data.get("mode") or data.get("action"))
            for kind, data in stored_events(tmp_path, call_id)
            if kind.startswith(("supervision.", "recording."))
        ]
        assert controls == [
            ("recording.started", "start"),
            ("supervision.started", "listen"),
            ("supervision.changed", "whisper"),
            ("supervision.stopped", "leave"),
            ("recording.stopped", "stop"),
        ]


@needs_baresip
@pytest.mark.parametrize(("digit", "bridged"), [("1", True), ("2", False)])
def test_press_one_on_a_forwarded_leg(tmp_path: Path, digit: str, bridged: bool) -> None:
    """The line forwards to a number through the trunk (a baresip 'provider' answering for
    it); the forwarded phone must press 1 before the caller is connected."""
    # the provider answers for the number (baresip takes calls to its own user only)
    provider = BaresipPhone(
        tmp_path, "+15559990000", tone=PROVIDER, auto_answer=True, play_seconds=60
    )
    with provider:
        data = directory(confirm_answer=True)
        data["users"].append(
            {
                "id": "fwd",
                "name": "Forwarded",
                "answer_by": "phone_number",
                "phone_number": "+15559990000",
            }
        )
        data["lines"][0]["route_to"] = {"user": "fwd"}
        with (
            trunk_bridge(tmp_path, data, sip__trunk_uri=f"sip:127.0.0.1:{provider.port}") as bridge,
            BaresipPhone(tmp_path, "caller", tone=CALLER, play_seconds=60) as caller,
        ):
            caller.dial(f"sip:{LINE}@127.0.0.1:{bridge.sip}")
            provider.wait_call_established(timeout=10)
            events = bridge.wait_events("sip_leg_awaiting_confirmation", timeout=5)
            assert events, "the forwarded leg was not asked to confirm"
            time.sleep(2.0)
            provider.send_dtmf(digit)
            if bridged:
                caller.wait_call_established(timeout=10)
                time.sleep(2)
                caller.hangup()
                caller.wait_closed(timeout=5)
                provider.wait_closed(timeout=5)
                assert tones_in(caller.received_audio(), [*TONES, PROVIDER]) == {PROVIDER}
                heard = provider.received_audio()
                assert CALLER in tones_in(stretch(heard, len(heard) / 16000 - 1.5, 1e9), TONES)
            else:
                provider.wait_closed(timeout=5)  # the bridge hung the leg up
                assert bridge.wait_events("sip_leg_declined", timeout=5)
                # the plan goes on: the user's fallback (voicemail) answers, not the provider
                assert bridge.wait_events("sip_voicemail_answered", timeout=5)
                caller.wait_call_established(timeout=5)
                time.sleep(1.0)
                caller.hangup()
                caller.wait_closed(timeout=5)
                assert PROVIDER not in tones_in(caller.received_audio(), [PROVIDER])


@needs_sipp
@needs_raw_socket
def test_voicemail_left_from_sipp_is_listed_and_holds_the_callers_tone(tmp_path: Path) -> None:
    """SIPp calls a line whose fallback is voicemail and plays a pcap: silence while the
    greeting and the beep play, then 2 s of 440 Hz, then hangs up. The message is listed
    through the API and its audio holds the tone."""
    greeting = 9.0  # the stock greeting and the beep take about 8 s
    samples = SAMPLES_PER_PACKET
    pcm = bytes(int(greeting * 16000)) + make_tone(CALLER, 2.0, 8000)
    encoded = g711_encode(pcm, PCMU)
    packets = [
        (
            i * 0.02,
            build_rtp(
                PCMU, 100 + i, i * samples, 0x5EED, encoded[i * samples : (i + 1) * samples], i == 0
            ),
        )
        for i in range(len(encoded) // samples)
    ]
    pcap = write_pcap(tmp_path / "caller.pcap", packets)
    data = directory()
    data["ring_groups"][0]["fallback"] = {"action": "voicemail"}
    with trunk_bridge(tmp_path, data) as bridge:  # nobody registered: straight to voicemail
        run_sipp(
            tmp_path,
            "uac_pcap.xml",
            f"127.0.0.1:{bridge.sip}",
            "-key", "pcap", str(pcap), "-s", LINE, "-d", "11600",
            timeout=30,
        )  # fmt: skip
        assert bridge.wait_events("sip_voicemail_recorded", timeout=5)
        [message] = bridge.api("/api/v1/voicemails")
        assert message["line"] == LINE and message["ended_by"] == "hangup"
        assert message["group_id"] == "desk"
        assert 1.5 <= message["duration_seconds"] <= 4.5
        wav = next((tmp_path / "var" / "recordings").rglob(f"{message['id']}.wav"))
        with wave.open(str(wav)) as file:
            assert file.getnchannels() == 1 and file.getframerate() == 8000
            audio = file.readframes(file.getnframes())
        assert tones_in(audio, TONES) == {CALLER}


@needs_sipp
@needs_raw_socket
def test_sipp_caller_to_an_echoing_sipp_desk_phone_is_heard_and_recorded(
    tmp_path: Path,
) -> None:
    """SIPp on the trunk plays 440 Hz from a pcap; the desk phone is SIPp with `-rtp_echo`
    (it sends back what it hears). The call's recording holds the caller's tone on the left
    and, on the right, the phone's echo of it: audio went through the engine both ways."""
    sipp_caller_is_heard_by_an_echoing_phone(tmp_path, "uac_pcap.xml")


def sipp_caller_is_heard_by_an_echoing_phone(tmp_path: Path, scenario: str) -> None:
    """SIPp on the trunk (`scenario`, playing 440 Hz) calls the line, a SIPp desk phone with
    `-rtp_echo` answers, the call is recorded: the caller's tone on the left, the echo on the
    right."""
    from tests.sip.test_sipp_calls import directory as sipp_directory
    from tests.sip.test_sipp_calls import start_phone, wait_registered

    pcap = tmp_path / "caller.pcap"
    tone_pcap(pcap, CALLER, 4.0)
    with trunk_bridge(tmp_path, sipp_directory()) as bridge:
        phone = start_phone(
            tmp_path, "phone_answer.xml", "301", bridge.sip, "-d", "200", "-rtp_echo"
        )
        wait_registered(bridge, 1)
        with sipp_process(
            tmp_path,
            scenario,
            f"127.0.0.1:{bridge.sip}",
            "-key", "pcap", str(pcap), "-s", LINE, "-d", "4500",
            timeout=30,
        ) as caller:  # fmt: skip
            answered = wait_for(
                lambda: [c for c in bridge.api("/api/v1/calls") if c["state"] == "answered"]
            )
            assert answered, f"the phone did not answer ({scenario})"
            status, started = bridge.request(
                "POST", f"/api/v1/calls/{answered[0]['call_id']}/recording", {"action": "start"}
            )
            assert status == 200, started
            result = caller.wait(30)
            assert result.returncode == 0, describe(result)
        phone.wait(timeout=20)
        [recording] = wait_for(
            lambda: [r for r in bridge.api("/api/v1/recordings") if r["status"] == "completed"]
        )
        frames = download_wav(bridge, recording["audio_url"], "admin", tmp_path / "r.wav")
        left = g711.audioop.tomono(frames, 2, 1, 0)
        right = g711.audioop.tomono(frames, 2, 0, 1)
        assert tones_in(left, TONES) == {CALLER}
        assert tones_in(right, TONES) == {CALLER}  # the echo, through the phone's leg
