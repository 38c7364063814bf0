"""The OpenAI Responses API (``/v1/responses``): a chain of responses (``previous_response_id``) served as one agent
program. ``api_router`` (routes), ``protocol`` (wire shapes), ``serving`` (one request's life), ``conversation`` and
``translation`` (to the chat generation it runs as), ``output`` and ``stream`` (rendering), ``store`` (stored
responses)."""
