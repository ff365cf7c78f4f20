"""Supervisor and recording controls on live calls: listen / whisper / barge, and recording
start / pause / resume / stop. One feature, one folder: `service.py` (who may, on which call,
then the carrier's command), `http.py` (thin routes), `schemas.py`, `errors.py`, `events.py`."""
