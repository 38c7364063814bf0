"""The REST workflows API (submit, observe, cancel, grow programs; client-side tools)."""
