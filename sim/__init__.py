"""Peers that drive a running bridge for real: the fake carrier, phones, app clients."""
