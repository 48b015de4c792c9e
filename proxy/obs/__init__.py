"""Observability: the structlog configuration and request line, Prometheus metrics."""
