"""coapbridge: a ThingsBoard-compatible CoAP front end for MQTT gateway platforms.

Constrained devices speak the ThingsBoard CoAP device API (RFC 7252) to the
bridge; the bridge speaks the ThingsBoard MQTT gateway API (``v1/gateway/*``)
to the upstream broker over one connection.
"""

__version__ = "0.1.0"
