# coapbridge: CoAP devices -> MQTT gateway (ThingsBoard gateway API).
#
#   docker build -t coapbridge .
#   docker run -p 5683:5683/udp -v coapbridge-data:/data \
#       -e MQTT_HOST=broker.example -e MQTT_USERNAME=<gateway token> coapbridge
#   docker run --rm -v coapbridge-data:/data coapbridge \
#       coapbridge --config /etc/coapbridge/coapbridge.yaml devices add my-device
#
# Every setting comes from the environment too (docs/configuration.md).
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# protoc compiles the schemas of PROTOBUF device profiles at start (device_profiles).
RUN apt-get update \
    && apt-get install -y --no-install-recommends protobuf-compiler \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
# README.m[d]: setup.cfg reads README.md when there is one; the glob lets it be absent.
COPY setup.cfg pyproject.toml README.m[d] ./
COPY bridge ./bridge
COPY twisted ./twisted

# A regular install puts twisted/plugins/coapbridge_plugin.py into
# site-packages/twisted/plugins; the plugin cache is then written as root, because
# the service user cannot write to site-packages at run time.
RUN pip install . \
    && python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))" \
    && twistd --help | grep -q coapbridge \
    && rm -rf /src

# uid/gid 999 fixed: deploy/kubernetes/statefulset.yaml gives the pod's volume to that group
RUN groupadd --system --gid 999 coapbridge \
    && useradd --system --uid 999 --gid 999 --no-create-home --home-dir /data \
       --shell /usr/sbin/nologin coapbridge \
    && mkdir -p /data /etc/coapbridge \
    && chown coapbridge:coapbridge /data \
    && chmod 700 /data
COPY conf/coapbridge.yaml /etc/coapbridge/coapbridge.yaml

ENV DATA_DIR=/data \
    COAPBRIDGE_CONFIG=/etc/coapbridge/coapbridge.yaml \
    METRICS_BIND_ADDRESS=0.0.0.0
VOLUME /data
WORKDIR /data
USER coapbridge
# 5683/tcp 5684/tcp 8683/tcp 8684/tcp: CoAP over TCP, TLS, WebSockets (RFC 8323), when enabled
EXPOSE 5683/udp 5684/udp 9683/tcp 5683/tcp 5684/tcp 8683/tcp 8684/tcp

CMD ["twistd", "-n", "--pidfile=", "coapbridge", "--config", "/etc/coapbridge/coapbridge.yaml"]
