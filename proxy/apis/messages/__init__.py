"""Anthropic's Messages API (``POST /v1/messages``) as a protocol adapter.  No I/O.

Like ``responses``: the stages, policy and stream moderation are chat completions' own,
and this package translates at the edges.

- **Request**: ``system`` and ``messages`` (text, ``tool_use``, ``tool_result``,
  ``thinking`` blocks; images follow ``prompt.non_text``) become chat messages the
  conversation is read from; client tools and an ``output_config`` JSON schema are the
  judged extras.  Server tools, containers, MCP servers, documents the upstream fetches,
  ``redacted_thinking`` and any thinking ``signature`` that is not a plain 32-hex token
  (Anthropic's carry the encrypted thinking itself) are refused.
- **Answers** read into a chat completion and back: ``thinking``, ``text`` and
  ``tool_use`` blocks built from judged text (a thinking block's signature is the
  proxy's own token; a ``tool_use`` id is the upstream's only if Anthropic's API takes
  it back, and an ``input`` that is not an object is the upstream's error).
- **Stream** (``stream_in``, ``stream_out``): the upstream's events read into chat chunks, the
  released chunks written back as Messages events.
- **Block**: ``stop_reason: "refusal"`` — what Anthropic's own streaming classifiers
  send — with the verdict in ``moderation`` (on the message, or on the stream's
  ``message_delta``).
- **Errors** are Anthropic's shape: ``{"type": "error", "error": {"type", "message"}}``.

Its four jobs, a module each: ``request``, ``answer``, ``stream_in``, ``stream_out``.
"""
