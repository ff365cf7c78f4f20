"""Carrier adapters: the dial paths that reach the bridge through a carrier's API."""
