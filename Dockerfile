# guardproxy: the moderating chat gateway.  Mount your own config and policies:
#   docker run -p 8080:8080 -v $PWD/config:/app/config:ro -v $PWD/policies:/app/policies:ro guardproxy
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GUARDPROXY_CONFIG=/app/config/proxy.yaml

WORKDIR /app
COPY pyproject.toml README.md ./
COPY proxy ./proxy
RUN pip install . \
    && useradd --system --no-create-home --uid 10001 guardproxy
COPY config ./config
COPY policies ./policies

USER guardproxy
EXPOSE 8080
VOLUME ["/app/config", "/app/policies"]
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"]
ENTRYPOINT ["guardproxy", "serve"]
CMD ["--host", "0.0.0.0", "--port", "8080"]
