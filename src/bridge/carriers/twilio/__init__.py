"""The carrier path over Twilio: signed voice webhooks in, TwiML out (see `service.py`)."""
