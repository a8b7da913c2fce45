"""Pure layer of SecAgg+ (Bell et al., CCS 2020, "Secure Single-Server Aggregation with
(Poly)Logarithmic Overhead"): configuration, quantization into Z_M, the communication graph,
mask expansion, key agreement and the messages' types. No Flower imports at all;
:mod:`fedrec.common.secagg.protocol` builds the client and server of the protocol on top.

What comes from where (no hand-written cipher anywhere):

* Shamir sharing, Fernet (AES-128-CBC + HMAC-SHA256) share encryption and the share
  plaintext layout are Flower's (``flwr.common.secure_aggregation``), used in ``secagg.py``.
* Key agreement is X25519 from ``cryptography``, with HKDF-SHA256 and a purpose label per use.
  Flower's ``generate_shared_key`` cannot be reused: it calls ``exchange(ec.ECDH(), …)``, which
  X25519 keys do not take (Flower's own key pairs are PEM-encoded SECP384R1; a raw 32-byte
  X25519 key keeps each Shamir share at 52 bytes).
* The mask PRG is the ChaCha20 keystream from ``cryptography``, not Flower's
  ``pseudo_rand_gen``: that one folds the 32-byte seed into a 32-bit MT19937 seed (2^32
  possible masks, searchable by anyone who can check a guess) and draws from [0, M − 2], so a
  masked value is not uniform on Z_M.
* Quantization is Flower's formula (``quantization.quantize``) with the randomness passed in,
  unsigned 64-bit integers (Flower casts to int32) and non-finite inputs rejected.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = [
    "COMPACT_MODULUS",
    "KEY_SIZE",
    "MASK_INFO",
    "MAX_MODULUS",
    "MIN_MODULUS",
    "MIN_SECURE_CLIENTS",
    "SHARE_INFO",
    "CollectRequest",
    "Entropy",
    "InsufficientSharesError",
    "ProtocolViolationError",
    "PublicKeys",
    "SecAggConfig",
    "SecAggError",
    "SecAggResult",
    "SecAggSettings",
    "ShareKeysReply",
    "ShareKeysRequest",
    "TamperedShareError",
    "UnmaskReply",
    "UnmaskRequest",
    "agree",
    "compact_bits",
    "decode_vector",
    "dequantize_sum",
    "encode_vector",
    "expand_mask",
    "flatten",
    "generate_keypair",
    "neighbour_graph",
    "pair_sign",
    "public_key_of",
    "quantize",
    "unflatten",
    "wire_dtype",
]

KEY_SIZE = 32  # X25519 keys, self-mask seeds and ChaCha20 keys are all 32 bytes
MASK_INFO = b"fedrec/secagg/v1/pairwise-mask"  # HKDF label: pairwise mask seed s_uv
SHARE_INFO = b"fedrec/secagg/v1/share-encryption"  # HKDF label: key encrypting u's shares to v
MAX_MODULUS = 2**64  # masks are added in uint64, whose wrap-around is exact mod any 2^b ≤ 2^64
# The fewest updates ever summed: a sum of two reveals each to the other (it knows its own),
# so no round starts, and no sum is unmasked, with fewer (config, grid, server, protocol).
MIN_SECURE_CLIENTS = 3
_NONCE = bytes(16)  # ChaCha20 counter ‖ nonce: every seed is fresh per round, used for one stream

Entropy = Callable[[int], bytes]  # n -> n secret random bytes (os.urandom outside tests)


class SecAggError(Exception):
    """A SecAgg+ round cannot go on; nothing about any client's input has been revealed."""


class InsufficientSharesError(SecAggError):
    """Fewer than t shares (or live neighbours) for a secret the round needs."""


class ProtocolViolationError(SecAggError):
    """A message breaks the protocol: wrong stage, unknown peer, malformed, or unsafe to answer."""


class TamperedShareError(SecAggError):
    """An encrypted share failed authentication (altered, or not addressed to this client)."""


@dataclass(frozen=True, kw_only=True)
class SecAggConfig:
    """Parameters of one SecAgg+ round; every constraint is checked here, once."""

    num_clients: int  # n: clients sampled into the round
    threshold: int  # t: shares that rebuild a secret; t ≤ k and 2t > k + 1
    num_neighbours: int | None = None  # k: peers each client masks with; None: n − 1 (SecAgg)
    clipping_range: float = 8.0  # c: every coordinate is clipped to [−c, c]
    quantization_range: int = 2**22  # Q: [−c, c] maps onto the integers [0, Q]
    modulus: int = 2**32  # M: sums live in Z_M; a power of two, n·Q < M ≤ 2^64

    def __post_init__(self) -> None:
        for name in ("num_clients", "threshold", "quantization_range", "modulus"):
            if type(getattr(self, name)) is not int:
                raise ValueError(f"SecAggConfig.{name} must be an int, got {getattr(self, name)!r}")
        n, k, t = self.num_clients, self.neighbours, self.threshold
        if n < MIN_SECURE_CLIENTS:
            raise ValueError(
                f"SecAggConfig.num_clients: need n ≥ {MIN_SECURE_CLIENTS} (a sum of 2 reveals"
                f" both), got {n}"
            )
        if self.num_neighbours is not None:
            if type(k) is not int or not 2 <= k <= n - 1:
                raise ValueError(
                    f"SecAggConfig.num_neighbours: need 2 ≤ k ≤ n − 1 = {n - 1}, got {k}"
                )
            if k < n - 1 and k % 2:
                raise ValueError(
                    f"SecAggConfig.num_neighbours: k < n − 1 must be even (k/2 per side), got {k}"
                )
        if not 2 <= t <= k:
            raise ValueError(f"SecAggConfig.threshold: need 2 ≤ t ≤ k = {k}, got {t}")
        if 2 * t <= k + 1:
            # A majority of each client's k + 1 shares: no two disjoint groups of its neighbours
            # can each give t shares, so a server telling them different dropout stories cannot
            # get both its self-mask seed and its mask key.
            raise ValueError(f"SecAggConfig.threshold: need 2t > k + 1 = {k + 1}, got t = {t}")
        if not (math.isfinite(self.clipping_range) and self.clipping_range > 0):
            raise ValueError(
                f"SecAggConfig.clipping_range: need a finite c > 0, got {self.clipping_range}"
            )
        if self.quantization_range < 1:
            raise ValueError(
                f"SecAggConfig.quantization_range: need Q ≥ 1, got {self.quantization_range}"
            )
        m = self.modulus
        if m < 2 or m > MAX_MODULUS or m & (m - 1):
            raise ValueError(f"SecAggConfig.modulus: need a power of two in [2, 2^64], got {m}")
        if m <= n * self.quantization_range:
            raise ValueError(
                f"SecAggConfig.modulus: the sum of n = {n} inputs reaches n·Q = "
                f"{n * self.quantization_range}; need M > n·Q, got M = {m}"
            )

    @property
    def neighbours(self) -> int:
        """k: the peers each client shares its secrets with and masks against."""
        return self.num_clients - 1 if self.num_neighbours is None else self.num_neighbours

    @property
    def num_shares(self) -> int:
        """Shares of each secret: one per neighbour plus the one a client keeps."""
        return self.neighbours + 1

    @property
    def step(self) -> float:
        """Δ = 2c/Q, one quantization step: each coordinate's rounding error is < Δ."""
        return 2 * self.clipping_range / self.quantization_range

    def rounding_norm(self, length: int) -> float:
        """Bound on ‖q(x) − x‖ for a vector of ``length`` coordinates inside [−c, c]: each
        coordinate moves by less than one step, so the norm moves by less than Δ·√length."""
        return self.step * math.sqrt(length)

    def max_sum_error(self, num_summed: int) -> float:
        """Bound on |dequantized sum − Σ clip(x_i)| per coordinate: num_summed · Δ (strict).

        Stochastic rounding is unbiased, so the typical error is ~ Δ·√num_summed / 2.
        """
        return num_summed * self.step


MIN_MODULUS = 2**32
COMPACT_MODULUS = 2**16  # a compact round's sums: 2-byte words on the wire


@dataclass(frozen=True)
class SecAggSettings:
    """The run's secure-aggregation settings (``secagg-*`` in the run config, checked here once);
    :meth:`for_round` sizes the protocol to a cohort."""

    neighbours: int = 0  # k; 0: 2⌈log2 n⌉ (SecAgg+); ≥ n − 1: complete graph (SecAgg)
    threshold: float = 0.5  # fraction of the k + 1 shares of a secret needed to rebuild it
    clip_range: float = 8.0  # c
    quantization_bits: int = 22  # Q = 2^b
    # compact (upload-compression = "int8" under SecAgg+): sums in Z_{2^16}, 2 bytes a
    # coordinate, with b lowered to the most bits a cohort of n leaves: n·2^b < 2^16
    compact: bool = False

    def __post_init__(self) -> None:
        if self.neighbours < 0:
            raise ValueError(f"secagg-neighbours must be >= 0, got {self.neighbours}")
        if not 0.5 <= self.threshold <= 1.0:
            raise ValueError(f"secagg-threshold must be in [0.5, 1], got {self.threshold}")
        if not (math.isfinite(self.clip_range) and self.clip_range > 0):
            raise ValueError(f"secagg-clip-range must be > 0, got {self.clip_range}")
        if not 1 <= self.quantization_bits <= 48:
            raise ValueError(
                f"secagg-quantization-bits must be in [1, 48], got {self.quantization_bits}"
            )

    def for_round(self, num_clients: int) -> SecAggConfig:
        """The protocol's parameters for a cohort of ``num_clients`` (≥ 3)."""
        n = num_clients
        full = n - 1
        k = self.neighbours or 2 * math.ceil(math.log2(max(n, 2)))
        if k >= full:
            k = full
        elif k % 2:
            k += 1  # k/2 neighbours on each side of the ring
        k = min(max(k, 2), full)
        t = max(math.floor((k + 1) / 2) + 1, math.ceil(self.threshold * (k + 1)))
        t = min(t, k)
        if self.compact:
            bits = min(self.quantization_bits, compact_bits(n))
            q, modulus = 2**bits, COMPACT_MODULUS
        else:
            q = 2**self.quantization_bits
            modulus = max(MIN_MODULUS, 1 << (n * q).bit_length())  # a power of two > n·Q
        return SecAggConfig(
            num_clients=n,
            threshold=t,
            num_neighbours=None if k == full else k,
            clipping_range=self.clip_range,
            quantization_range=q,
            modulus=modulus,
        )

    def describe(self) -> dict[str, Any]:
        return {
            "neighbours": self.neighbours or "2*ceil(log2 n)",
            "threshold": self.threshold,
            "clip_range": self.clip_range,
            "quantization_bits": self.quantization_bits,
            "compact": self.compact,
        }


def compact_bits(num_clients: int) -> int:
    """The most quantization bits b with n·2^b < 2^16: a compact round's resolution."""
    bits = math.floor(math.log2((COMPACT_MODULUS - 1) / num_clients))
    if bits < 1:
        raise ValueError(
            f"a compact secure round of {num_clients} clients leaves no quantization bit"
            f" (n·2^b < 2^16): turn upload-compression off or sample fewer clients"
        )
    return bits


def neighbour_graph(
    node_ids: Sequence[int], num_neighbours: int, rng: np.random.Generator
) -> dict[int, frozenset[int]]:
    """Each node's neighbourhood, itself included (k + 1 nodes), in the SecAgg+ graph.

    A ring over a random permutation, each node joined to the k/2 nodes on either side: the
    Harary graph H(k, n) under random relabelling (Bell et al. 2020, §3; the same graph as
    Flower's ``SecAggPlusWorkflow``). k = n − 1 is the complete graph, i.e. SecAgg
    (Bonawitz et al., CCS 2017).
    """
    n = len(node_ids)
    if len(set(node_ids)) != n:
        raise ValueError("neighbour_graph: node ids repeat")
    if num_neighbours == n - 1:
        return {u: frozenset(node_ids) for u in node_ids}
    if num_neighbours % 2 or not 2 <= num_neighbours < n:
        raise ValueError(f"neighbour_graph: need an even k in [2, n), got k={num_neighbours}")
    ring = [node_ids[i] for i in rng.permutation(n)]
    half = num_neighbours // 2
    return {
        u: frozenset(ring[(i + off) % n] for off in range(-half, half + 1))
        for i, u in enumerate(ring)
    }


def flatten(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """All arrays as one float64 vector (d,), in order; masks work on this flat view."""
    if not arrays:
        return np.zeros(0, dtype=np.float64)
    return np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays])


def unflatten(vector: np.ndarray, shapes: Sequence[tuple[int, ...]]) -> list[np.ndarray]:
    """Inverse of :func:`flatten` for the given shapes."""
    sizes = [math.prod(s) for s in shapes]
    if sum(sizes) != vector.size:
        raise ValueError(f"unflatten: shapes hold {sum(sizes)} values, vector has {vector.size}")
    parts = np.split(vector, np.cumsum(sizes)[:-1]) if sizes else []
    return [p.reshape(s) for p, s in zip(parts, shapes, strict=True)]


def quantize(values: np.ndarray, config: SecAggConfig, rng: np.random.Generator) -> np.ndarray:
    """Clip to [−c, c], map onto [0, Q] and round stochastically: (d,) float -> (d,) uint64.

    q = ⌊y⌋ + Bernoulli(y − ⌊y⌋) with y = (clip(x) + c)·Q/(2c), so E[q·Δ − c] = clip(x) and
    |q·Δ − c − clip(x)| < Δ (Flower's ``quantization.quantize``; randomness passed in).
    """
    if not np.all(np.isfinite(values)):
        raise ValueError("quantize: the update has non-finite values (NaN or ±inf)")
    c, q_range = config.clipping_range, config.quantization_range
    scaled = (np.clip(values, -c, c) + c) * (q_range / (2 * c))  # (d,) in [0, Q]
    low = np.floor(scaled)
    rounded = low + (rng.random(scaled.shape) < scaled - low)
    return np.minimum(rounded, q_range).astype(np.uint64)  # min: float rounding past Q


def dequantize_sum(total: np.ndarray, num_summed: int, config: SecAggConfig) -> np.ndarray:
    """Σ q_i (already reduced mod M; exact since M > n·Q) back to ≈ Σ clip(x_i): (d,) float64.

    Each q_i encodes x_i as q_i·Δ − c, so the sum of num_summed inputs is Σq·Δ − num_summed·c.
    """
    return total.astype(np.float64) * config.step - num_summed * config.clipping_range


def expand_mask(seed: bytes, length: int, modulus: int) -> np.ndarray:
    """A uniform vector in Z_M^length from a 32-byte seed: (length,) uint64.

    The ChaCha20 keystream (RFC 8439), 8 little-endian bytes per coordinate, reduced mod M;
    exactly uniform because M divides 2^64.
    """
    if len(seed) != KEY_SIZE:
        raise ValueError(f"expand_mask: need a {KEY_SIZE}-byte seed, got {len(seed)} bytes")
    stream = Cipher(algorithms.ChaCha20(seed, _NONCE), mode=None).encryptor()
    words = np.frombuffer(stream.update(bytes(8 * length)), dtype="<u8")
    return words & np.uint64(modulus - 1)


def pair_sign(own: int, peer: int) -> int:
    """+1 if this client adds the pairwise mask shared with ``peer``, −1 if it subtracts it.

    Flower's convention (the larger node id adds); the two ends cancel in the sum.
    """
    if own == peer:
        raise ValueError(f"pair_sign: a client has no pairwise mask with itself ({own})")
    return 1 if own > peer else -1


def generate_keypair(entropy: Entropy) -> tuple[bytes, bytes]:
    """An X25519 key pair as raw (private, public) 32-byte strings."""
    private = X25519PrivateKey.from_private_bytes(entropy(KEY_SIZE))
    return private.private_bytes_raw(), private.public_key().public_bytes_raw()


def public_key_of(private_key: bytes) -> bytes:
    """The raw public key of a raw X25519 private key (to check a reconstructed key)."""
    return X25519PrivateKey.from_private_bytes(private_key).public_key().public_bytes_raw()


def agree(private_key: bytes, peer_public_key: bytes, info: bytes) -> bytes:
    """A 32-byte key both ends derive: HKDF-SHA256(X25519(sk_u, pk_v), info) (RFC 7748, 5869).

    ``info`` separates uses (:data:`MASK_INFO`, :data:`SHARE_INFO`).
    """
    shared = X25519PrivateKey.from_private_bytes(private_key).exchange(
        X25519PublicKey.from_public_bytes(peer_public_key)
    )
    return HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=None, info=info).derive(shared)


def wire_dtype(modulus: int) -> np.dtype:
    """The narrowest little-endian unsigned integer holding Z_M: 2 bytes for M ≤ 2^16 (the
    compact rounds of ``SecAggSettings.compact``), 4 for M ≤ 2^32, else 8."""
    if modulus <= COMPACT_MODULUS:
        return np.dtype("<u2")
    return np.dtype("<u4") if modulus <= 2**32 else np.dtype("<u8")


def encode_vector(vector: np.ndarray, modulus: int) -> bytes:
    """A vector of Z_M as bytes, for the wire."""
    return vector.astype(wire_dtype(modulus)).tobytes()


def decode_vector(data: bytes, length: int, modulus: int) -> np.ndarray:
    """Bytes from the wire back to (length,) uint64, rejecting a wrong size or value ≥ M."""
    dtype = wire_dtype(modulus)
    if len(data) != length * dtype.itemsize:
        raise ProtocolViolationError(
            f"masked vector has {len(data)} bytes, expected {length} × {dtype.itemsize}"
        )
    vector = np.frombuffer(data, dtype=dtype).astype(np.uint64)
    if vector.size and int(vector.max()) >= modulus:
        raise ProtocolViolationError(f"masked vector has a value ≥ M = {modulus}")
    return vector


# Messages: every field an int, bytes or a tuple of them (a Flower ConfigRecord holds each).


def _paired(a: tuple[object, ...], b: tuple[object, ...], what: str) -> None:
    if len(a) != len(b) or len(set(a)) != len(a):
        raise ProtocolViolationError(f"{what}: {len(a)} ids (distinct?) for {len(b)} values")


@dataclass(frozen=True)
class PublicKeys:
    """setup reply: a client's two X25519 public keys (Flower's pk1, pk2)."""

    mask_key: bytes  # pk1: agrees the pairwise mask seeds s_uv
    share_key: bytes  # pk2: agrees the keys that encrypt shares


@dataclass(frozen=True)
class ShareKeysRequest:
    """share_keys: the public keys of the client's live neighbours, its own included."""

    public_keys: Mapping[int, PublicKeys]


@dataclass(frozen=True)
class ShareKeysReply:
    """share_keys reply: Enc(src ‖ dst ‖ share of b ‖ share of sk1) for each neighbour."""

    destinations: tuple[int, ...]
    ciphertexts: tuple[bytes, ...]

    def __post_init__(self) -> None:
        _paired(self.destinations, self.ciphertexts, "ShareKeysReply")


@dataclass(frozen=True)
class CollectRequest:
    """collect_masked_vectors: the ciphertexts addressed to this client, by sender."""

    sources: tuple[int, ...]
    ciphertexts: tuple[bytes, ...]

    def __post_init__(self) -> None:
        _paired(self.sources, self.ciphertexts, "CollectRequest")


@dataclass(frozen=True)
class UnmaskRequest:
    """unmask: whose self-mask seed shares, and whose mask-key shares, the server needs."""

    survivors: tuple[int, ...]  # their masked vectors are in the sum: give shares of b_u
    dropped: tuple[int, ...]  # shared keys, then sent no vector: give shares of sk1_d


@dataclass(frozen=True)
class UnmaskReply:
    """unmask reply: one share per id, survivors' seed shares then dropped clients' key shares."""

    node_ids: tuple[int, ...]
    shares: tuple[bytes, ...]

    def __post_init__(self) -> None:
        _paired(self.node_ids, self.shares, "UnmaskReply")


@dataclass(frozen=True)
class SecAggResult:
    """What the server learns: the sum of the contributors' clipped inputs, and who they are."""

    total: list[np.ndarray]  # Σ_{u in contributors} clip(x_u), shapes as given, ± n·Δ
    contributors: tuple[int, ...]  # U3: clients whose masked vectors were summed
