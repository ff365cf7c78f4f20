"""The console's voicemail inbox in headless Chromium: a message left for a ring group is seen
by its members (and an admin), plays from the page (the WAV fetched with the user's token),
and is deleted by a member; a message for someone else's group is not shown."""

from __future__ import annotations

import wave
from datetime import UTC, datetime
from pathlib import Path

from bridge.recordings.store import MediaArchive
from tests.console.cdp import Browser, present, text_of
from tests.console.conftest import LINE, bridge_run, needs_chromium, open_console
from tests.media.audio import tone

pytestmark = needs_chromium

CALLER = "+15557654321"


def leave_message(root: Path, group_id: str, caller: str) -> str:
    """A message as the SIP path leaves one: allocated, its WAV written, then saved."""
    archive = MediaArchive(root, durable=False)
    archive.load()
    meta, path = archive.new_voicemail(
        "sip-test", caller=caller, line=LINE, user_id=None, group_id=group_id,
        now=datetime(2026, 12, 6, 9, 30, tzinfo=UTC),
    )  # fmt: skip
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(8000)
        wav.writeframes(tone(440.0, 2.0))
    archive.message_recorded(meta.id, 2.0, "pound")
    return meta.id


async def test_group_members_see_play_and_delete_a_message(
    tmp_path: Path, browser: Browser, shots: Path
) -> None:
    root = tmp_path / "recordings"
    message = leave_message(root, "sales", CALLER)
    leave_message(root, "support", "+15550000000")  # another group's: not alice's
    with bridge_run(tmp_path, media__recordings_dir=str(root)) as bridge:
        alice = await open_console(browser, bridge, "alice")
        item = f'#voicemails .voicemail[data-voicemail-id="{message}"]'
        await alice.wait_for(present(item))
        assert await alice.count("#voicemails .voicemail") == 1
        assert await alice.text(f"{item} .vm-caller") == CALLER
        assert await alice.text(f"{item} .vm-for") == "for ring group sales"
        assert "0:02" in await alice.text(f"{item} .note")
        await alice.click(f"{item} button[data-action=play]")
        await alice.wait_for(
            f"document.querySelector('{item} audio')?.src.startsWith('blob:') === true"
        )
        await alice.screenshot(shots / "console-voicemail.png")

        bob = await open_console(browser, bridge, "bob")  # the other member sees it too
        await bob.wait_for(present(item))
        olivia = await open_console(browser, bridge, "olivia")  # an admin sees every one
        await olivia.wait_for("document.querySelectorAll('#voicemails .voicemail').length === 2")

        await alice.click(f"{item} button[data-action=delete]")
        await alice.wait_for(f"{text_of('#voicemail-status')} === 'Message deleted'")
        await alice.wait_for(f"!({present(item)})")
        assert not await alice.prop("#no-voicemails", "hidden")
        listed = await bridge.api("GET", "/api/v1/voicemails", "olivia")
        assert [m["id"] for m in listed.json()] != [] and message not in {
            m["id"] for m in listed.json()
        }
