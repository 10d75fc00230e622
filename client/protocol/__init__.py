"""The wire protocol shared by every streamvault process: message types, the binary
data-path codec and the msgpack control codec, named limits, names and hashes, the event
framing inside segments, and the one typed error tree.

Reading order: limits → errors → messages → codec → naming → events → transport.
"""

from streamvault.client.protocol import codec, errors, events, limits, messages, naming

__all__ = ["codec", "errors", "events", "limits", "messages", "naming"]
