"""The pure gateway core: no Twisted, txThings or paho imports, no clocks.

Everything here takes plain values (and ``now`` in seconds) and returns
plain values or actions, so it is tested without sockets or reactors.
"""
