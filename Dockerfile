# syntax=docker/dockerfile:1
# The gateway image: `gateway serve` by default; the same image runs `gateway migrate` and
# `gateway ledger` (the Helm chart in helm/gateway uses it for all three).
#
#   docker build -t llm-gateway .
#   docker run --rm llm-gateway --help
#   docker run --rm -p 8080:8080 llm-gateway demo --host 0.0.0.0  # SQLite + SIMULATED upstream
#   docker run --rm -p 8080:8080 -e GATEWAY_DATABASE_URL=... -e GATEWAY_REDIS_URL=... \
#     -e GATEWAY_CONFIG=/etc/gateway/routing.yaml -v $PWD/routing.yaml:/etc/gateway/routing.yaml:ro llm-gateway
#
# Runs as the unprivileged user 10001 and works with a read-only root filesystem, given
# writable mounts at /var/lib/gateway/spool (GATEWAY_SPOOL_DIR) and /tmp.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# Dependencies first, cached while only the code changes: install what pyproject.toml
# declares by installing a stub of the project (built in its own directory, so that no stale
# build/ output can leak into the real install), then remove the stub.
COPY pyproject.toml README.md /tmp/deps/
RUN mkdir /tmp/deps/gateway && touch /tmp/deps/gateway/__init__.py \
    && pip install /tmp/deps \
    && pip uninstall -y llm-gateway \
    && rm -rf /tmp/deps
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY migrations ./migrations
# `gateway migrate` looks for migrations/ beside the installed package (gateway/db/migrate.py:
# <package dir>/../migrations), which `pip install .` does not ship: copy it there.
RUN pip install --no-deps . \
    && cp -r migrations "$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/" \
    && python -m compileall -q /opt/venv \
    && gateway --help >/dev/null

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    GATEWAY_SPOOL_DIR=/var/lib/gateway/spool
RUN groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/gateway --no-create-home \
       --shell /usr/sbin/nologin gateway \
    && mkdir -p /var/lib/gateway/spool \
    && chown -R 10001:10001 /var/lib/gateway
COPY --from=build /opt/venv /opt/venv
# The working directory is writable: the embedded default database (sqlite gateway.db) and
# the spool live here when nothing else is configured.
WORKDIR /var/lib/gateway
USER 10001:10001
EXPOSE 8080
# No HEALTHCHECK: Kubernetes ignores it (the chart probes /healthz and /readyz), and the same
# image runs `gateway ledger` and `gateway migrate`, which serve no HTTP and would be marked
# unhealthy. With plain Docker, probe http://127.0.0.1:8080/healthz from outside.
ENTRYPOINT ["gateway"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8080"]
