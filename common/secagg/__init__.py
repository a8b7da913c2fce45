"""fedrec.common.secagg: SecAgg+ (Bell et al. 2020), what both of its sides share.

A train round becomes four Flower message stages — setup, share_keys, collect_masked_vectors,
unmask — after which the server learns only the sum of the cohort's quantized updates:

    primitives  settings, quantization, masks, key agreement, Shamir shares: pure, no Flower
    protocol    the client's and the server's state machines over those primitives
    wire        the protocol's messages as Flower ConfigRecords, and back

The device's half (its train mod) is ``fedrec.client.secagg``, the server's (an aggregator of
the round loop) ``fedrec.server.secagg``.
"""

__all__ = [
    "primitives",
    "protocol",
    "wire",
]
