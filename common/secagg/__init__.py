"""fedrec.common.secagg: secure aggregation (SecAgg+, Bell et al. 2020), both sides, one place.

A train round becomes four Flower message stages — setup, share_keys, collect_masked_vectors,
unmask — after which the server learns only the sum of the cohort's quantized updates:

    primitives  settings, quantization, masks, key agreement, Shamir shares: pure, no Flower
    protocol    the client's and the server's state machines over those primitives
    wire        the protocol's messages as Flower ConfigRecords, and back
    device      the device's train mod: answers the stages, masks its clipped update
    grid        the server's Grid wrapper: runs each train fan-out as a secure round

The device mod is installed by ``fedrec.client.app``, the grid by ``fedrec.server.app``.
"""

__all__ = ["device", "grid", "primitives", "protocol", "wire"]
