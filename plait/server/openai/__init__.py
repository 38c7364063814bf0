"""The OpenAI-compatible API (chat completions, completions, models)."""
