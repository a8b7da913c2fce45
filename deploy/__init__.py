"""fedrec.deploy: a real Flower deployment — the SuperLink and SuperNode processes, over TLS.

processes    supervised child processes, their logs and the environment they run in
credentials  the CA and server certificate, device key pairs
superlink    the SuperLink: its process, the flwr Control API, runs submitted and followed
supernode    a device joining: its SuperNode over its own store, supervised
local        ``fedrec deploy local``: a whole deployment on this machine's loopback
cli          ``fedrec server …``, ``fedrec deploy …``, ``fedrec client keygen/join``
"""

__all__ = ["cli", "credentials", "local", "processes", "superlink", "supernode"]
