"""Desk phones and the trunk, scripted: `inproc` drives the SIP application in-process."""
