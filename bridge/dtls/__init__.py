"""DTLS 1.2 without I/O: the CoAPs server as a sans-IO state machine.

``server.DtlsServer`` takes datagrams with ``now`` and gives back datagrams to send,
events (``events``: ``SessionEstablished``, ``Plaintext``, ``SessionEnded``,
``HandshakeFailed``) and when it wants its timer; a session is a ``DtlsPeer`` value.
Its parts: ``listener`` (the cookie phase), ``context`` (the OpenSSL context, the
verified credential), ``psk`` (the PSK callback through cryptography's bindings),
``resumption`` (credentials of resumable sessions), ``sessions`` (the session table and
its bounds, the handshake guard), ``records`` (record framing read without OpenSSL),
``cookies`` (stateless HelloVerifyRequest cookies) and ``failures`` (failed handshakes
summed up for the log), ``bindings`` (OpenSSL's per-datagram calls through
cryptography's bindings, under the objects pyOpenSSL owns). OpenSSL (pyOpenSSL's
context and connections over memory BIOs) does the cryptography; no
module here touches a socket, a clock or Twisted: ``bridge/edge/dtls.py`` drives it.
"""
