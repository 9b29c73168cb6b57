# The rtjobs worker image (README "Operating in a cluster" → "Image"):
#   docker build -t rtjobs-worker .
# Build arguments:
#   BASE_IMAGE   a Debian-based Python 3.11 image (python3 with venv and ensurepip); both stages use it, so the
#                virtual environment's interpreter link is valid in the final image
#   PIP_OPTIONS  extra pip options; offline: "--no-index --find-links=/src/wheels" with a wheelhouse in ./wheels
#   UID, GID     the worker's user and group (10001; the Kubernetes manifests run as 10001:10001)
#   DOCKER_GID   the group id of the host's Docker socket (`stat -c %g /var/run/docker.sock`): the worker's user
#                joins it, so it reaches the socket through its group, not as root. Empty (the default): give
#                the group at run time instead (`docker run --group-add <gid>`, Kubernetes supplementalGroups),
#                or point DOCKER_HOST at the socket proxy (deploy/docker-socket-proxy).
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
ARG PIP_OPTIONS=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
COPY . /src
# The project without its dev extra and without its development stack (rtjobs/dev: `--dev` then fails with one
# line), the runtime dependencies at the releases of constraints.txt: only those reach the final image. pip
# compiles the bytecode here, so a read-only root file system costs nothing at run time.
RUN rm -rf /src/rtjobs/dev \
    && python3 -m venv /opt/rtjobs \
    && /opt/rtjobs/bin/pip install --no-compile $PIP_OPTIONS -c /src/constraints.txt /src \
    && /opt/rtjobs/bin/python -m compileall -q /opt/rtjobs/lib

FROM ${BASE_IMAGE}
ARG UID=10001
ARG GID=10001
ARG DOCKER_GID=""
RUN groupadd --system --gid "$GID" rtjobs \
    && useradd --system --uid "$UID" --gid "$GID" --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin rtjobs \
    && if [ -n "$DOCKER_GID" ]; then \
         group="$(getent group "$DOCKER_GID" | cut -d: -f1)"; \
         if [ -z "$group" ]; then group=docker-host; groupadd --gid "$DOCKER_GID" "$group"; fi; \
         usermod --append --groups "$group" rtjobs; \
       fi
COPY --from=build /opt/rtjobs /opt/rtjobs
# Health on all interfaces of the container (the kubelet and the HEALTHCHECK below probe it); metrics stay
# off unless RTJOBS_METRICS_ADDRESS is given (the Kubernetes ConfigMap sets it).
ENV PATH=/opt/rtjobs/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    RTJOBS_HEALTH_ADDRESS=0.0.0.0:8081
USER rtjobs
WORKDIR /opt/rtjobs
EXPOSE 8081 9464
# No curl in the image: Python's urllib asks GET /healthz on RTJOBS_HEALTH_ADDRESS (a wildcard host → loopback).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 CMD ["/opt/rtjobs/bin/python", "-c", "import os, sys, urllib.request\nhost, _, port = os.environ.get('RTJOBS_HEALTH_ADDRESS', '').rpartition(':')\nhost = host.strip('[]')\nhost = {'': '127.0.0.1', '0.0.0.0': '127.0.0.1', '::': '::1'}.get(host, host)\nif not port:\n    sys.exit('RTJOBS_HEALTH_ADDRESS is not set: no health endpoint to ask')\nurl = f'http://[{host}]:{port}/healthz' if ':' in host else f'http://{host}:{port}/healthz'\nwith urllib.request.urlopen(url, timeout=4) as reply:\n    sys.exit(0 if reply.status == 200 else 1)\n"]
# Exec form: the worker is PID 1 and receives SIGTERM itself (graceful shutdown within
# RTJOBS_GRACEFUL_SHUTDOWN_TIMEOUT_S, then exit 0); no shell in between to swallow the signal.
ENTRYPOINT ["/opt/rtjobs/bin/python", "-m", "worker"]
