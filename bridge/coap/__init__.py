"""CoAP without I/O: the codec (``options``, ``message``), the exchange layer every
transport shares (``exchange``, ``blocks``) and the message layer of datagram transports
(``datagram``, ``dedup``); see docs/architecture.md, "The CoAP layers"."""
