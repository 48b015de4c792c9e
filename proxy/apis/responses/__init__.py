"""The OpenAI Responses API (``POST /v1/responses``) as a protocol adapter.  No I/O.

The stages, the policy, the verdict cache and the stream moderation are chat
completions' own: this package only translates at the edges.

- **Request**: every field has one treatment, as for chat (``request.py``).  ``input``
  items and ``instructions`` become chat messages, validated key by key, and the
  conversation is read from those (``read_messages``); function tools and a
  ``text.format`` JSON schema are the judged extras.  What makes the upstream read text
  the proxy never sees — stored state (``previous_response_id``, ``conversation``, a
  stored ``prompt``), encrypted reasoning, item references, built-in tools that fetch or
  run things — is refused.  The body is forwarded as received, without ``moderation``.
- **Whole answer**: the upstream's response is read into a chat completion (reasoning,
  output text, refusal, function calls), which ``answer.read_completion`` rebuilds from
  judged text and type-checked fields; the client's response is built back from that.
- **Stream** (``stream_in``, ``stream_out``): ``ResponsesEvents`` reads each upstream event into
  the chat chunk it amounts to (``StreamState.feed_chunk``); ``ResponsesEncoder`` writes
  what the stream state releases as Responses events.  Every event the client gets is the
  proxy's own; ``*.done`` events and the final response carry exactly the released text.
- **Block**: ``status: "incomplete"``, ``incomplete_details.reason: "content_filter"``
  (and ``response.incomplete`` as a stream's last event), the verdict in ``moderation``.

Its four jobs, a module each: ``request``, ``answer``, ``stream_in``, ``stream_out``.
"""
