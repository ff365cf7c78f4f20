"""Supervisor and recording controls on live calls: listen / whisper / barge, and recording
start / pause / resume / stop. One feature, one folder: `service.py` (who may, on which call,
then the call's `Supervision`, the port in `bridge.calls.ports`), `http.py` (thin routes, the
errors' kinds as HTTP statuses), `schemas.py`, `errors.py`, `events.py`. No carrier import:
each dial path implements the port (`carriers/twilio/supervision.py`, `sip/supervision.py`)."""
