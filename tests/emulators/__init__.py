"""Loopback emulators: the guard (SGLang + Qwen3Guard-Gen) and an OpenAI-compatible upstream."""
