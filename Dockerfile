# guardproxy: the moderating chat gateway.  The image holds the program only; the server
# config and the tenant policies are mounted (policies reload live when their files change):
#
#   docker build -t guardproxy .
#   docker run -p 8080:8080 -v "$PWD/config:/app/config:ro" -v "$PWD/policies:/app/policies:ro" guardproxy
#
# The config must listen on 0.0.0.0 inside a container (the command line below does that)
# and point guard.url and the upstreams at addresses the container can reach.
# Pin by digest as well for reproducible builds:
#   docker build --build-arg PYTHON_IMAGE=python:3.12.12-slim-bookworm@sha256:<digest> .
ARG PYTHON_IMAGE=python:3.12.12-slim-bookworm

# ---- build: install guardproxy and its dependencies into a virtualenv
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/guardproxy
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proxy ./proxy
# the extras every shipped config may turn on (cache.redis_url: redis; audit.url
# postgresql://: postgres); tests/test_image.py checks each shipped config with exactly this
# requirement installed
RUN /opt/guardproxy/bin/pip install '.[redis,postgres]'

# ---- runtime: the virtualenv on a clean base, run as an unprivileged user
FROM ${PYTHON_IMAGE}
ENV PATH=/opt/guardproxy/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    GUARDPROXY_CONFIG=/app/config/proxy.yaml
# /var/lib/guardproxy, the user's own: the audit trail's SQLite file (audit.url:
# sqlite:////var/lib/guardproxy/audit.db) and its key file
RUN useradd --system --no-create-home --uid 10001 --user-group guardproxy \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/guardproxy
COPY --from=build /opt/guardproxy /opt/guardproxy
WORKDIR /app
USER 10001:10001
EXPOSE 8080
VOLUME ["/app/config", "/app/policies"]
# a named volume mounted here starts with the directory's owner (the user above)
VOLUME ["/var/lib/guardproxy"]
# The slim image has no curl: Python itself asks /healthz.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"]
ENTRYPOINT ["guardproxy"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8080"]
