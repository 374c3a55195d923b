"""The runtime glue between the edges and the pure core, one concern per module.

* ``coap_requests``: the CoAP request adapter (a txThings message -> the core's
  ``Request``, or a plain uplink kept for the end of the turn; the core's
  ``Reply`` -> the answer of that request).
* ``admission``: how many requests of one source are processed at once.
* ``lookup``: the registry's copy the core reads (token -> device), refreshed once per turn
  before the core sees a request: no event of the core does I/O.
* ``commit``: the outbox's group commit (one transaction per reactor turn) and the
  backlog read back in slices after a restart.
* ``notifications``: observe notifications, sent on the next reactor turn in order.
* ``dispatch``: the core's actions -> their handlers (a table built once).
* ``bridge``: ``Bridge`` builds the core and joins the parts and the MQTT link.

The service tree that starts and stops them is ``bridge/service.py``.
"""
