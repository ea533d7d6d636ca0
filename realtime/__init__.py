"""The delivery layer: sockets, the bus between instances, routing, ordering, the registry.

It knows nothing of conversations' contents or messages' meaning: apps (chat, presence) give it
frames, envelopes and handlers. See protocol.py for the wire format.
"""
