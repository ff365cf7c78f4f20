"""Durable records: the event outbox and its webhooks (docs/events.md)."""
