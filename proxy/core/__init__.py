"""The core: protocol shapes, SSE, the conversation the guard reads, the template, verdicts,
policy decisions, stream moderation state, long inputs and the verdict cache.  Pure: no
network, no event loop (``tests/test_layout.py`` holds it to that)."""
