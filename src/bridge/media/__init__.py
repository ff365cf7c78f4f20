"""Media on the SIP path: the embedded RTP engine (docs/media.md, to come with issue 15).

Sans-I/O pieces (RTP and RFC 4733 packets, SDP, G.711, the mixer, the jitter buffer, the
recording writer) take bytes and values and return bytes and values; the asyncio relay
(sockets, the port pool, latching, timeouts) is the thin layer around them.
"""
