"""An app answering a SIP trunk call with audio, the way a browser does: the bridge's WebRTC
offer over the WebSocket, an aiortc peer's answer in `call.accept`, ICE-lite and DTLS-SRTP to
the bridge's media engine, plain RTP toward the trunk. Real peers: a `bridge run` process, a
baresip caller on the trunk playing 440 Hz, the app (sim.apps, aiortc) playing 1 kHz; an FFT
of what each heard, and of the call's recording, says they heard each other.

Also the ways an app's accept can go wrong on this path: an unusable SDP answer is an `error`
frame and the offer keeps ringing; an app whose ICE never completes loses its accept with
`media_failed` and the call rings the next layer (a desk phone), which answers.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import wave
from pathlib import Path
from typing import Any

from sim.apps.audio import WebRtcPhone
from sim.apps.client import AppClient

from bridge.media import g711
from tests.media.audio import tone, tones_in
from tests.media.peers import BaresipPhone, needs_baresip, write_wav
from tests.sip.peers import trunk_bridge
from tests.sip.test_apps_legs import app_session
from tests.sip.test_media_peers import download_wav
from tests.sip.test_sipp_calls import start_phone, wait_registered
from tests.sip.test_sipp_register import ha1

pytestmark = needs_baresip

LINE, LAYERED = "+15550100", "+15550101"
CALLER, APP, SUPERVISOR = 440.0, 1000.0, 2000.0
TONES = [CALLER, APP, SUPERVISOR]


def directory() -> dict[str, Any]:
    return {
        "timezone": "UTC",
        "users": [
            {"id": "admin", "name": "Admin", "role": "admin", "answer_by": "will_not_answer"},
            {"id": "ana", "name": "Ana", "answer_by": "apps"},
            {
                "id": "sam",
                "name": "Sam",
                "role": "supervisor",
                "answer_by": "will_not_answer",
                "permissions": ["barge_whisper"],
            },
            {
                "id": "ben",
                "name": "Ben",
                "answer_by": "ip_phone",
                "sip": {"username": "302", "ha1_md5": ha1("302", "pw-302")},
            },
        ],
        "ring_groups": [
            {
                "id": "layered",
                "name": "Ana, then Ben",
                "layers": [
                    {"members": ["ana"], "timeout_seconds": 30},
                    {"members": ["ben"], "timeout_seconds": 20},
                ],
                "fallback": {"action": "hangup"},
            }
        ],
        "lines": [
            {"number": LINE, "name": "Ana", "route_to": {"user": "ana"}},
            {"number": LAYERED, "name": "Layered", "route_to": {"ring_group": "layered"}},
        ],
    }


async def offer_for(ana: AppClient) -> dict[str, Any]:
    offer = await ana.expect("call.offer", timeout=15)
    assert "UDP/TLS/RTP/SAVPF" in offer["sdp"] and "a=ice-lite" in offer["sdp"]
    return offer


async def answered_in_app(
    bridge: Any, caller: BaresipPhone, ana: AppClient, phone: WebRtcPhone
) -> str:
    """The caller dials the line, Ana's app accepts with `phone`'s WebRTC answer: the call id,
    once the bridge says answered."""
    caller.dial(f"sip:{LINE}@127.0.0.1:{bridge.sip}")
    offer = await offer_for(ana)
    await ana.accept(offer["call_id"], sdp=await phone.answer(offer["sdp"]))
    await ana.expect("call.state", timeout=15, call_id=offer["call_id"], state="answered")
    return str(offer["call_id"])


async def test_an_app_over_webrtc_and_a_trunk_caller_hear_each_other(tmp_path: Path) -> None:
    with (
        trunk_bridge(tmp_path, directory()) as bridge,
        BaresipPhone(tmp_path, "caller", tone=CALLER, play_seconds=60) as caller,
    ):
        ana = await app_session(bridge, "ana")
        phone = WebRtcPhone(tone(APP, 60.0))
        try:
            call_id = await answered_in_app(bridge, caller, ana, phone)
            await asyncio.to_thread(caller.wait_call_established, timeout=10)
            await asyncio.wait_for(phone.connected.wait(), 5)
            await asyncio.sleep(1.0)  # the first packets of both sides
            start = phone.mark()
            await asyncio.sleep(3.0)
            heard_by_app = phone.heard[start:]
            # the call's recording, with the app's leg as the other side
            path = f"/api/v1/calls/{call_id}/recording"
            status, body = bridge.request("POST", path, {"action": "start"})
            assert status == 200, body
            await asyncio.sleep(2.0)
            status, stopped = bridge.request("POST", path, {"action": "stop"})
            assert status == 200 and stopped["status"] == "completed", stopped
            recording = bridge.api(f"/api/v1/recordings/{stopped['recording_sid']}")
            frames = await asyncio.to_thread(
                download_wav, bridge, recording["audio_url"], "admin", tmp_path / "call.wav"
            )
            caller.hangup()
            await asyncio.to_thread(caller.wait_closed, timeout=5)
            ended = await ana.expect("call.state", timeout=10, state="ended")
            assert ended["reason"] == "caller_hangup"
            assert len(heard_by_app) > 2 * 8000 * 2  # more than two seconds of audio
            assert tones_in(heard_by_app, TONES) == {CALLER}
            assert tones_in(caller.received_audio(), TONES) == {APP}
            assert tones_in(g711.audioop.tomono(frames, 2, 1, 0), TONES) == {CALLER}  # left
            assert tones_in(g711.audioop.tomono(frames, 2, 0, 1), TONES) == {APP}  # right
        finally:
            await phone.close()
            await ana.close()
        connected = [e for e in bridge.log_events() if e.get("event") == "media_webrtc_connected"]
        assert len(connected) == 1


async def test_an_unusable_answer_is_an_error_and_a_good_one_then_answers(tmp_path: Path) -> None:
    with (
        trunk_bridge(tmp_path, directory()) as bridge,
        BaresipPhone(tmp_path, "caller", tone=CALLER, play_seconds=60) as caller,
    ):
        ana = await app_session(bridge, "ana")
        phone = WebRtcPhone(tone(APP, 60.0))
        try:
            caller.dial(f"sip:{LINE}@127.0.0.1:{bridge.sip}")
            offer = await offer_for(ana)
            call_id = offer["call_id"]
            answer = await phone.answer(offer["sdp"])
            for bad, why in (
                ("", "needs the SDP answer"),
                ("v=0\r\nthis is not SDP\r\n", "cannot be used"),
                (answer.replace("a=fingerprint:", "a=x-fingerprint:"), "fingerprint"),
                (answer.replace("a=mid:0", "a=mid:0\r\na=candidate:1 1 udp x"), "candidate"),
            ):
                request = await ana.accept(call_id, sdp=bad)
                error = await ana.expect("error", timeout=10, id=request)
                assert error["code"] == "invalid_frame" and error["field"] == "sdp"
                assert why in error["message"], error
            await ana.accept(call_id, sdp=answer)  # still ringing: this one answers
            state = await ana.expect("call.state", timeout=15, call_id=call_id)
            assert state["state"] == "answered"
            await asyncio.to_thread(caller.wait_call_established, timeout=10)
            caller.hangup()
            await asyncio.to_thread(caller.wait_closed, timeout=5)
        finally:
            await phone.close()
            await ana.close()


async def test_an_app_whose_ice_never_completes_loses_and_the_next_layer_answers(
    tmp_path: Path,
) -> None:
    with trunk_bridge(tmp_path, directory(), media__webrtc_connect_seconds="2") as bridge:
        ben = start_phone(tmp_path, "phone_answer.xml", "302", bridge.sip, "-d", "2000")
        wait_registered(bridge, 1)
        with BaresipPhone(tmp_path, "caller", tone=CALLER, play_seconds=60) as caller:
            ana = await app_session(bridge, "ana")
            phone = WebRtcPhone(tone(APP, 5.0))
            try:
                caller.dial(f"sip:{LAYERED}@127.0.0.1:{bridge.sip}")
                offer = await offer_for(ana)
                answer = await phone.answer(offer["sdp"])
                await phone.close()  # the app's side is gone: its handshake will not complete
                await ana.accept(offer["call_id"], sdp=answer)
                ended = await ana.expect("call.ended", timeout=10, call_id=offer["call_id"])
                assert ended["reason"] == "media_failed"
                # the ring group moved on to Ben's desk phone, which answers
                await asyncio.to_thread(caller.wait_call_established, timeout=15)
                caller.hangup()
                await asyncio.to_thread(caller.wait_closed, timeout=5)
            finally:
                await ana.close()
        assert ben.wait(timeout=30) == 0
        failed = [e for e in bridge.log_events() if e.get("event") == "media_webrtc_failed"]
        # (aiortc may have sent its first checks before it closed: then DTLS is what never came)
        assert failed and ("ICE" in failed[0]["reason"] or "DTLS" in failed[0]["reason"])
        answered = [e for e in bridge.log_events() if e.get("event") == "sip_call_answered"]
        assert [e["user_id"] for e in answered] == ["ben"]


async def test_sim_apps_answers_with_a_wav_and_records_what_it_heard(tmp_path: Path) -> None:
    played = write_wav(tmp_path / "app-tone.wav", tone(APP, 20.0))
    heard_dir = tmp_path / "heard"
    with (
        trunk_bridge(tmp_path, directory()) as bridge,
        BaresipPhone(tmp_path, "caller", tone=CALLER, play_seconds=60) as caller,
    ):
        sim = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sim.apps", "-c", str(bridge.config), "--users", "ana",
            "--play", str(played), "--record-dir", str(heard_dir), "--seconds", "30",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        try:
            assert sim.stdout is not None
            line = b""
            while b"connected" not in line:  # (warnings on stderr may come first)
                line = await asyncio.wait_for(sim.stdout.readline(), 15)
                assert line, "sim.apps ended before it connected"
            assert b"connected 1 sessions" in line, line
            caller.dial(f"sip:{LINE}@127.0.0.1:{bridge.sip}")
            await asyncio.to_thread(caller.wait_call_established, timeout=15)
            await asyncio.sleep(3.0)
            caller.hangup()
            await asyncio.to_thread(caller.wait_closed, timeout=5)
            await asyncio.sleep(0.5)  # (the app's side of the hang-up)
            sim.send_signal(signal.SIGTERM)  # stops as after --seconds: summary, recordings
            output, _ = await asyncio.wait_for(sim.communicate(), 30)
        finally:
            if sim.returncode is None:
                sim.kill()
                await sim.wait()
        assert sim.returncode == 0, output
        summary = json.loads(output.decode().strip().splitlines()[-1])
        assert summary["won"] == 1, summary
        [recorded] = list(heard_dir.glob("*.wav"))
        with wave.open(str(recorded), "rb") as wav:
            assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (8000, 1, 2)
            heard = wav.readframes(wav.getnframes())
        assert len(heard) > 2 * 8000 * 2
        assert tones_in(heard, TONES) == {CALLER}
        assert tones_in(caller.received_audio(), TONES) == {APP}


async def test_a_supervisor_barges_from_their_app_then_whispers_then_leaves(
    tmp_path: Path,
) -> None:
    with (
        trunk_bridge(tmp_path, directory()) as bridge,
        BaresipPhone(tmp_path, "caller", tone=CALLER, play_seconds=60) as caller,
    ):
        ana, sam = await app_session(bridge, "ana"), await app_session(bridge, "sam")
        agent, supervisor = WebRtcPhone(tone(APP, 60.0)), WebRtcPhone(tone(SUPERVISOR, 60.0))
        try:
            call_id = await answered_in_app(bridge, caller, ana, agent)
            await asyncio.to_thread(caller.wait_call_established, timeout=10)

            joined = await sam.request("call.monitor", call_id=call_id, mode="barge")
            assert joined["type"] == "ack", joined
            assert joined["result"]["via"] == "client" and joined["result"]["status"] == "dialing"
            # (pushed before the ack: `request` skipped it in the queue, `frames` has it)
            [monitor_offer] = sam.received("monitor.offer")
            assert monitor_offer["call_id"] == call_id
            assert monitor_offer["mode"] == "barge" and "a=ice-lite" in monitor_offer["sdp"]
            answered = await sam.request(
                "monitor.answer", call_id=call_id, sdp=await supervisor.answer(monitor_offer["sdp"])
            )
            assert answered["type"] == "ack", answered
            assert answered["result"]["status"] == "in-progress"
            listed = bridge.api("/api/v1/calls")[0]
            assert listed["monitors"]["sam"]["via"] == "client"

            await asyncio.sleep(1.0)
            marks = (agent.mark(), supervisor.mark())
            await asyncio.sleep(2.5)
            barge = (agent.heard[marks[0] :], supervisor.heard[marks[1] :])
            switched = await sam.request("call.monitor", call_id=call_id, mode="whisper")
            assert switched["type"] == "ack" and switched["result"]["mode"] == "whisper"
            await asyncio.sleep(0.5)
            marks = (agent.mark(), supervisor.mark())
            await asyncio.sleep(2.5)
            whisper = (agent.heard[marks[0] :], supervisor.heard[marks[1] :])
            left = await sam.request("call.monitor", call_id=call_id, mode="stop")
            assert left["type"] == "ack"
            [ended] = sam.received("monitor.ended")
            assert ended["call_id"] == call_id and ended["reason"] == "stopped"
            caller.hangup()
            await asyncio.to_thread(caller.wait_closed, timeout=5)
        finally:
            for phone in (agent, supervisor):
                await phone.close()
            await ana.close()
            await sam.close()
        # barge: everybody hears everybody; whisper: the agent hears the supervisor, the
        # supervisor hears both, and the caller never hears the supervisor after the switch
        assert tones_in(barge[0], TONES) == {CALLER, SUPERVISOR}
        assert tones_in(barge[1], TONES) == {CALLER, APP}
        assert tones_in(whisper[0], TONES) == {CALLER, SUPERVISOR}
        assert tones_in(whisper[1], TONES) == {CALLER, APP}
        assert SUPERVISOR in tones_in(caller.received_audio(), TONES)  # from the barge


async def test_a_supervisor_without_an_app_session_is_refused(tmp_path: Path) -> None:
    with (
        trunk_bridge(tmp_path, directory()) as bridge,
        BaresipPhone(tmp_path, "caller", tone=CALLER, play_seconds=60) as caller,
    ):
        ana = await app_session(bridge, "ana")
        agent = WebRtcPhone(tone(APP, 30.0))
        try:
            call_id = await answered_in_app(bridge, caller, ana, agent)
            status, body = bridge.request(
                "POST", f"/api/v1/calls/{call_id}/monitor", {"mode": "listen"}, user="sam"
            )
            assert status == 409 and "no app session" in body["detail"]
            caller.hangup()
            await asyncio.to_thread(caller.wait_closed, timeout=5)
        finally:
            await agent.close()
            await ana.close()
