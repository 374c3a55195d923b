"""DTLS without I/O: record framing, stateless cookies and the session bounds.

What the DTLS transport (``bridge/edge/dtls.py``) needs besides OpenSSL itself, as
plain functions and state tested without sockets or a TLS library: splitting a
flight into datagrams (``records``), the HelloVerifyRequest cookie (``cookies``) and
the table of sessions with its limits (``sessions``).
"""
