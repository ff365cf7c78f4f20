"""Call recordings and voicemail messages: where the media engine's WAV files are kept, what is
known of each (a JSON sidecar next to the audio, so it survives a restart), and the HTTP API
that lists and serves them. One feature, one folder: `store.py` (`MediaArchive`, the files and
their metadata; no event loop), `http.py` (thin routes and who may see what), `plugin.py`
(`build_archive`). docs/recordings.md has the API, the permissions and the storage layout."""
