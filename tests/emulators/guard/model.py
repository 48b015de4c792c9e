"""Verdicts: a rule table instead of a model."""

from __future__ import annotations

from dataclasses import dataclass

from proxy.demo.rules import (  # the rule table, shared with the demo guard
    Mode,
    Severity,
)

SEVERITY_TOKENS: dict[Severity, str] = {
    "Safe": " Safe",
    "Unsafe": " Unsafe",
    "Controversial": " Cont",
}
# The runner-up severities, most likely first, and the share of the remaining mass each gets.
_RUNNERS_UP: dict[Severity, tuple[Severity, Severity]] = {
    "Safe": ("Controversial", "Unsafe"),
    "Unsafe": ("Controversial", "Safe"),
    "Controversial": ("Unsafe", "Safe"),
}
_RUNNER_UP_SHARES = (0.6, 0.3)  # 10% of the remainder goes to tokens outside the top three


def severity_distribution(
    severity: Severity, probability: float
) -> tuple[tuple[Severity, float], ...]:
    """P(severity token): ``probability`` for ``severity``, 60% and 30% of the rest to others."""
    rest = 1.0 - probability
    first, second = _RUNNERS_UP[severity]
    return (
        (severity, probability),
        (first, rest * _RUNNER_UP_SHARES[0]),
        (second, rest * _RUNNER_UP_SHARES[1]),
    )


@dataclass(frozen=True, kw_only=True)
class Verdict:
    mode: Mode
    severity: Severity
    category: str
    refusal: bool | None  # None in prompt moderation
    distribution: tuple[tuple[Severity, float], ...]  # over the severity token, greedy first
    judged: str

    @property
    def probability(self) -> float:
        return dict(self.distribution)[self.severity]

    @property
    def text(self) -> str:
        """What the model generates (before the ``<|im_end|>`` stop token)."""
        lines = [f"Safety: {self.severity}", f"Categories: {self.category}"]
        if self.refusal is not None:
            lines.append(f"Refusal: {'Yes' if self.refusal else 'No'}")
        return "\n".join(lines)
