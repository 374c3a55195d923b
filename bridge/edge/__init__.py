"""The I/O edge: txThings (CoAP), paho-mqtt (MQTT) and SQLite live here."""
