# coapbridge: CoAP devices -> MQTT gateway (ThingsBoard gateway API).
#
#   docker build -t coapbridge .
#   docker run -p 5683:5683/udp -p 5684:5684/udp -p 9683:9683 -v coapbridge-data:/data \
#       -e MQTT_HOST=broker.example -e MQTT_USERNAME=<gateway token> coapbridge
#   docker run --rm -v coapbridge-data:/data coapbridge coapbridge devices add my-device
#
# Configured by environment variables, every setting (docs/configuration.md); no
# configuration file is needed. The commented example is in the image at
# /usr/local/share/coapbridge/coapbridge.yaml: mount an edited copy and set
# COAPBRIDGE_CONFIG to its path to use one.
# The image is what `make test` smoke-tests as a wheel; `make test-image` runs the same
# suite (tests/artifact) against the image where a Docker engine runs.

# The wheel, built from the sources as `python -m build` builds it for PyPI.
FROM python:3.11-slim-bookworm AS wheel
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml setup.cfg MANIFEST.in README.md LICENSE ./
COPY bridge ./bridge
COPY twisted ./twisted
COPY conf ./conf
RUN pip install --no-cache-dir build==1.6.1 \
    && python -m build --wheel --outdir /wheels .

FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# The wheel with the shared registry's extra (PostgreSQL). protoc for PROTOBUF device
# profiles comes with it (grpcio-tools): nothing from apt. pip compiles the bytecode here
# and Twisted's plugin cache (dropin.cache) is written here, as root: at run time the
# root file system may be read-only (deploy/kubernetes), the bridge writes only DATA_DIR
# and the temporary directory.
COPY --from=wheel /wheels /wheels
# DL3013: the wheel is this build's own; its dependencies are bounded in setup.cfg.
# hadolint ignore=DL3013
RUN wheel=$(ls /wheels/coapbridge-*.whl) \
    && pip install --no-cache-dir "${wheel}[postgresql]" \
    && rm -rf /wheels \
    && python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))" \
    && twistd --help | grep -q coapbridge \
    && python -c "import bridge.dtls, bridge.edge.dtls, psycopg, grpc_tools"

# uid/gid 999, numeric below: deploy/kubernetes/statefulset.yaml gives the pod's volume to
# that group, and runAsNonRoot can only check a numeric user.
RUN groupadd --system --gid 999 coapbridge \
    && useradd --system --uid 999 --gid 999 --no-create-home --home-dir /data \
       --shell /usr/sbin/nologin coapbridge \
    && mkdir -p /data \
    && chown 999:999 /data \
    && chmod 700 /data

ENV DATA_DIR=/data \
    METRICS_BIND_ADDRESS=0.0.0.0
VOLUME /data
WORKDIR /data
USER 999:999
# 5683/tcp 5684/tcp 8683/tcp 8684/tcp: CoAP over TCP, TLS, WebSockets (RFC 8323), when enabled
EXPOSE 5683/udp 5684/udp 9683/tcp 5683/tcp 5684/tcp 8683/tcp 8684/tcp

# Liveness: /healthz answers while the reactor runs (/readyz is for load balancers).
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('METRICS_PORT', '9683'), timeout=2)"]

CMD ["twistd", "-n", "--pidfile=", "coapbridge"]
