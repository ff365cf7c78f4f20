"""The agent and supervisor console (`/console`): one static page, one vanilla JS module and
a stylesheet in `static/`, served as they are (no build step). The page is a client of `/ws`
(docs/ws-protocol.md) and of `GET /api/v1/me`; everything it may do is checked again by the
server."""
