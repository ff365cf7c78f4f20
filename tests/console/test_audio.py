"""The console as a phone: headless Chromium with a fake microphone playing one tone, logged in
to a `bridge run` with a SIP trunk, answers a call that a baresip caller places through the
trunk; then a supervisor's console (another Chromium, another tone) barges in. What each
heard is checked as audio: the caller's recording by FFT, each page's incoming stream by a
WebAudio analyser the test attaches over the DevTools protocol to the page's own <audio>
element. Tones: caller 440 Hz, the agent's microphone 1 kHz, the supervisor's 2 kHz.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.console.cdp import Browser, Chromium, Page
from tests.console.conftest import CONNECTED, needs_chromium
from tests.media.audio import tone, tones_in
from tests.media.peers import BaresipPhone, needs_baresip, write_wav
from tests.sip.peers import RunningBridge, trunk_bridge

pytestmark = [needs_chromium, needs_baresip]

LINE = "+15550100"
CALLER, AGENT, SUPERVISOR = 440.0, 1000.0, 2000.0
TONES = [CALLER, AGENT, SUPERVISOR]


def directory() -> dict[str, Any]:
    return {
        "timezone": "UTC",
        "users": [
            {"id": "admin", "name": "Admin", "role": "admin", "answer_by": "will_not_answer"},
            {"id": "alice", "name": "Alice Doe", "role": "agent", "answer_by": "apps"},
            {
                "id": "sam",
                "name": "Sam Supervisor",
                "role": "supervisor",
                "answer_by": "will_not_answer",
                "permissions": ["barge_whisper"],
            },
        ],
        "lines": [{"number": LINE, "name": "Main line", "route_to": {"user": "alice"}}],
    }


def pulses(freq: float, seconds: float) -> bytes:
    """A tone in 300 ms pulses with 200 ms gaps: the browser's noise suppression (on, as for a
    real agent) fades a steady tone out within seconds as noise, and keeps a pulsed one."""
    on, off = tone(freq, 0.3), bytes(int(0.2 * 8000) * 2)
    return (on + off) * int(seconds / 0.5)


def browser_with_microphone(tmp_path: Path, name: str, freq: float) -> Chromium:
    """A Chromium whose microphone is a WAV of one pulsed tone (looped), granted without
    asking."""
    folder = tmp_path / f"chromium-{name}"
    folder.mkdir()
    wav = write_wav(folder / "microphone.wav", pulses(freq, 20.0))
    return Chromium(
        folder / "profile",
        folder / "chromium.log",
        extra_flags=(
            "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={wav}",
            "--autoplay-policy=no-user-gesture-required",
        ),
    )


async def console(browser: Browser, bridge: RunningBridge, user: str) -> Page:
    page = await browser.new_page()
    await page.navigate(f"http://127.0.0.1:{bridge.http}/console")
    await page.wait_for("document.body.dataset.ready === 'true'")
    await page.click("#use-token")
    await page.type_into("#token", await asyncio.to_thread(bridge.token, user))
    await page.click("#login-form button[type=submit]")
    await page.wait_for(CONNECTED)
    return page


async def ring_and_accept(page: Page, bridge: RunningBridge, caller: BaresipPhone) -> None:
    """The caller dials the line; the page's Accept is clicked as soon as it shows."""
    caller.dial(f"sip:{LINE}@127.0.0.1:{bridge.sip}")
    await page.wait_for("document.querySelector('[data-action=accept]') !== null", 15)
    await page.click("[data-action=accept]")


# The levels (dB, WebAudio's scale) at our tones in what the page's <audio> element of a call
# plays, over `seconds`: an AnalyserNode on the element's stream, averaged over many reads.
HEARD_JS = """
(async () => {
  const audio = document.querySelector('audio[data-kind="%(kind)s"]');
  if (!audio || !audio.srcObject) return null;
  const context = new AudioContext();
  const analyser = context.createAnalyser();
  analyser.fftSize = 8192;
  analyser.smoothingTimeConstant = 0;
  context.createMediaStreamSource(audio.srcObject).connect(analyser);
  const bins = new Float32Array(analyser.frequencyBinCount);
  const sums = new Float64Array(analyser.frequencyBinCount);
  let reads = 0;
  const hz = context.sampleRate / analyser.fftSize;
  const end = performance.now() + %(ms)d;
  while (performance.now() < end) {
    await new Promise((r) => setTimeout(r, 100));
    analyser.getFloatFrequencyData(bins);
    for (let i = 0; i < bins.length; i++) sums[i] += Math.pow(10, bins[i] / 10);
    reads += 1;
  }
  const level = (f) => {
    let best = 0;
    for (let d = -3; d <= 3; d++) best = Math.max(best, sums[Math.round(f / hz) + d] / reads);
    return 10 * Math.log10(best || 1e-30);
  };
  // the noise floor: the median bin of the telephone band (above it there is nothing at all)
  const band = Array.from(sums.slice(Math.round(100 / hz), Math.round(3800 / hz)));
  band.sort((a, b) => a - b);
  const floor = 10 * Math.log10(band[band.length >> 1] / reads || 1e-30);
  await context.close();
  return JSON.stringify({floor, levels: %(tones)s.map((f) => [f, level(f)])});
})()
"""


async def heard(page: Page, kind: str, seconds: float = 2.0) -> set[float]:
    """The tones a page hears on its call (`kind`: "call" or "monitor"): those well above the
    spectrum's median bin (WebAudio reads relative dB; a tone stands 40-60 dB above it)."""
    script = HEARD_JS % {"kind": kind, "ms": int(seconds * 1000), "tones": json.dumps(TONES)}
    result = await page.evaluate(script)
    assert result is not None, f"no {kind} audio element with a stream"
    data = json.loads(result)
    found = {f for f, level in data["levels"] if level > data["floor"] + 30}
    print(f"{kind} hears {sorted(found)}: floor {data['floor']:.1f} dB, tones", data["levels"])
    return found


async def test_an_agent_answers_in_the_console_and_a_supervisor_barges_in_from_theirs(
    tmp_path: Path,
) -> None:
    agent_chromium = browser_with_microphone(tmp_path, "agent", AGENT)
    supervisor_chromium = browser_with_microphone(tmp_path, "supervisor", SUPERVISOR)
    try:
        with (
            trunk_bridge(tmp_path, directory()) as bridge,
            BaresipPhone(tmp_path, "caller", tone=CALLER, play_seconds=90) as caller,
        ):
            agent_browser = await Browser.connect(agent_chromium)
            supervisor_browser = await Browser.connect(supervisor_chromium)
            try:
                alice = await console(agent_browser, bridge, "alice")
                sam = await console(supervisor_browser, bridge, "sam")
                await ring_and_accept(alice, bridge, caller)
                await asyncio.to_thread(caller.wait_call_established, timeout=15)
                await alice.wait_for(
                    "document.querySelector('[data-audio=connected]') !== null", 15
                )
                answered_at = time.monotonic()
                assert await heard(alice, "call") == {CALLER}

                await sam.wait_for(
                    "document.querySelector('[data-control=barge]') && "
                    "!document.querySelector('[data-control=barge]').disabled",
                    15,
                )
                await sam.click("[data-control=barge]")
                await sam.wait_for(
                    "document.querySelector('#control-status').textContent"
                    ".includes('you are in the call')",
                    15,
                )
                barged_at = time.monotonic() - answered_at
                await asyncio.sleep(1.0)
                agent_hears, supervisor_hears = await asyncio.gather(
                    heard(alice, "call"), heard(sam, "monitor")
                )
                assert (agent_hears, supervisor_hears) == ({CALLER, SUPERVISOR}, {CALLER, AGENT})

                await sam.click("[data-control=leave]")
                await sam.wait_for("document.querySelector('audio') === null", 10)
                await alice.click("#hang-up")
                await asyncio.to_thread(caller.wait_closed, timeout=10)
                await alice.wait_for("document.querySelector('audio') === null", 10)
                errors = alice.errors + sam.errors
                assert not errors, errors
            finally:
                await agent_browser.close()
                await supervisor_browser.close()
            caller_heard = caller.received_audio()
            before_barge = caller_heard[: int(barged_at * 8000) * 2]
            assert tones_in(before_barge, TONES) == {AGENT}
            assert tones_in(caller_heard, TONES) == {AGENT, SUPERVISOR}
    finally:
        agent_chromium.stop()
        supervisor_chromium.stop()


@pytest.mark.parametrize("why", ["microphone"])
async def test_a_refused_microphone_is_said_in_words_and_the_call_rings_on(
    tmp_path: Path, why: str
) -> None:
    folder = tmp_path / "chromium-denied"
    folder.mkdir()
    # No fake-UI flag: the permission prompt cannot be answered headless, so it is denied.
    chromium = Chromium(
        folder / "profile",
        folder / "chromium.log",
        extra_flags=("--use-fake-device-for-media-stream", "--deny-permission-prompts"),
    )
    try:
        with (
            trunk_bridge(tmp_path, directory()) as bridge,
            BaresipPhone(tmp_path, "caller", tone=CALLER, play_seconds=60) as caller,
        ):
            browser = await Browser.connect(chromium)
            try:
                alice = await console(browser, bridge, "alice")
                await ring_and_accept(alice, bridge, caller)
                banner = await alice.wait_for(
                    "!document.querySelector('#banner').hidden && "
                    "document.querySelector('#banner').textContent",
                    10,
                )
                assert "microphone" in banner
                # still ringing: the Accept button is back
                await alice.wait_for("!document.querySelector('[data-action=accept]').disabled", 5)
                caller.hangup()
                await asyncio.to_thread(caller.wait_closed, timeout=5)
            finally:
                await browser.close()
    finally:
        chromium.stop()


async def test_audio_that_cannot_connect_ends_the_ring_in_words(tmp_path: Path) -> None:
    # The engine advertises an address where nothing listens (still loopback): the browser's
    # ICE checks go nowhere, and after `webrtc_connect_seconds` the accept fails.
    chromium = browser_with_microphone(tmp_path, "agent", AGENT)
    try:
        with (
            trunk_bridge(
                tmp_path,
                directory(),
                media__public_address="127.0.0.2",
                media__webrtc_connect_seconds="2",
            ) as bridge,
            BaresipPhone(tmp_path, "caller", tone=CALLER, play_seconds=60) as caller,
        ):
            browser = await Browser.connect(chromium)
            try:
                alice = await console(browser, bridge, "alice")
                await ring_and_accept(alice, bridge, caller)
                ending = await alice.wait_for(
                    "document.querySelector('#endings [data-reason=media_failed]')"
                    " && document.querySelector('#endings [data-reason=media_failed]').textContent",
                    15,
                )
                assert "audio could not be set up" in ending
                await alice.wait_for("document.querySelector('audio') === null", 5)
                caller.hangup()
                await asyncio.to_thread(caller.wait_closed, timeout=5)
            finally:
                await browser.close()
    finally:
        chromium.stop()
