"""The served model's constants, as SGLang and the model's files give them."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

Fault = Literal["http_500", "garbage", "hang", "reset"]
Json = dict[str, Any]

MODEL_PATH = "Qwen/Qwen3Guard-Gen-0.6B"
CONTEXT_LEN = 32768  # config.json max_position_embeddings: what /v1/models reports
TOKENIZER_MAX_LEN = 131072  # tokenizer_config.json model_max_length: what /tokenize reports
DEFAULT_TEMPERATURE = 0.6  # generation_config.json of the Qwen3 family, used when unset
DEFAULT_MAX_NEW_TOKENS = 128  # SamplingParams default
WEIGHT_VERSION = "default"
GARBAGE_TEXT = "I think it's fine"
FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "qwen3guard"
