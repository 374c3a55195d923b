"""The CoAP message layer without I/O: codec checks, deduplication, block-wise transfers, and
the endpoint state machine a transport (UDP today, DTLS next) feeds with datagrams and time."""
