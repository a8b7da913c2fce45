"""SecAgg+ protocol core (Bell et al., CCS 2020; semi-honest variant, the stages of Flower's
``SecAggPlusWorkflow`` / ``secaggplus_mod``) as plain objects, with no Flower Messages.

    stage                   server -> client            client -> server
    setup                   (config)                    PublicKeys (pk1 masks, pk2 shares)
    share_keys              ShareKeysRequest            ShareKeysReply (a ciphertext per peer)
    collect_masked_vectors  CollectRequest              masked vector (bytes)
    unmask                  UnmaskRequest               UnmaskReply (shares)

Client u holds x_u and sends y_u = q(x_u) + PRG(b_u) + Σ_v ±PRG(s_uv) mod M, where b_u is its
self-mask seed and s_uv comes from X25519(sk1_u, pk1_v). Shamir shares of b_u and sk1_u go,
encrypted under X25519(sk2_u, pk2_v), to each neighbour v through the server. To unmask, the
server gets b_u for each survivor and sk1_d for each client d that dropped after sharing, never
both for one client: each client refuses a request naming a peer in both lists. The message
types live in :mod:`fedrec.common.secagg.primitives`.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping, Sequence, Set
from typing import Any

import numpy as np
from cryptography.fernet import InvalidToken
from flwr.common.secure_aggregation.crypto.shamir import combine_shares, create_shares
from flwr.common.secure_aggregation.crypto.symmetric_encryption import decrypt, encrypt
from flwr.common.secure_aggregation.secaggplus_constants import Stage
from flwr.common.secure_aggregation.secaggplus_utils import (
    share_keys_plaintext_concat,
    share_keys_plaintext_separate,
)

from fedrec.common.secagg.primitives import (
    KEY_SIZE,
    MASK_INFO,
    MIN_SECURE_CLIENTS,
    SHARE_INFO,
    CollectRequest,
    Entropy,
    InsufficientSharesError,
    ProtocolViolationError,
    PublicKeys,
    SecAggConfig,
    SecAggResult,
    ShareKeysReply,
    ShareKeysRequest,
    TamperedShareError,
    UnmaskReply,
    UnmaskRequest,
    agree,
    decode_vector,
    dequantize_sum,
    encode_vector,
    expand_mask,
    flatten,
    generate_keypair,
    neighbour_graph,
    pair_sign,
    public_key_of,
    quantize,
    unflatten,
)

__all__ = [
    "SecAggClient",
    "SecAggServer",
    "StateValue",
    "run_secagg",
]

StateValue = int | str | bytes | list[int] | list[bytes]  # what a ConfigRecord can hold
_NEW, _DONE = "new", "done"
_ORDER = (_NEW, *Stage.all(), _DONE)  # setup, share_keys, collect_masked_vectors, unmask


class _Stages:
    """Forward-only stage tracking: a party answers each stage once, in order."""

    def __init__(self, who: str) -> None:
        self.who, self.stage = who, _NEW

    def enter(self, stage: str) -> None:
        if _ORDER.index(stage) != _ORDER.index(self.stage) + 1:
            raise ProtocolViolationError(f"{self.who}: got stage {stage!r} after {self.stage!r}")
        self.stage = stage


class SecAggClient:
    """One client of a SecAgg+ round (Bell et al. 2020, Fig. 2; Flower's ``secaggplus_mod``)."""

    def __init__(
        self, node_id: int, config: SecAggConfig, *, entropy: Entropy = os.urandom
    ) -> None:
        self.node_id, self.config = node_id, config
        self._entropy = entropy  # secrets (keys, seed) only; os.urandom outside tests
        self._stages = _Stages(f"client {node_id}")
        self._mask_sk = self._share_sk = self._seed = b""
        self._own = PublicKeys(b"", b"")
        self._keys: dict[int, PublicKeys] = {}  # neighbour -> its public keys (self included)
        self._seed_shares: dict[int, bytes] = {}  # owner -> share of owner's b held here
        self._key_shares: dict[int, bytes] = {}  # owner -> share of owner's sk1 held here

    def setup(self) -> PublicKeys:
        """Stage 0: two fresh key pairs, one for masks and one for encrypting shares."""
        self._stages.enter(Stage.SETUP)
        self._mask_sk, mask_pk = generate_keypair(self._entropy)
        self._share_sk, share_pk = generate_keypair(self._entropy)
        self._own = PublicKeys(mask_pk, share_pk)
        return self._own

    def share_keys(self, request: ShareKeysRequest) -> ShareKeysReply:
        """Stage 1: share b_u and sk1_u (t of k + 1), encrypt each neighbour's pair of shares."""
        self._stages.enter(Stage.SHARE_KEYS)
        keys, t = dict(request.public_keys), self.config.threshold
        if keys.get(self.node_id) != self._own:
            raise ProtocolViolationError(
                f"client {self.node_id}: own public keys missing or altered"
            )
        if len(keys) > self.config.num_shares:
            raise ProtocolViolationError(f"client {self.node_id}: {len(keys)} neighbours > k + 1")
        if len(keys) < t:
            raise InsufficientSharesError(
                f"client {self.node_id}: {len(keys)} neighbours < t = {t}"
            )
        flat = [k for pk in keys.values() for k in (pk.mask_key, pk.share_key)]
        if len(set(flat)) != len(flat):
            raise ProtocolViolationError(f"client {self.node_id}: repeated public keys")
        self._keys, self._seed = keys, self._entropy(KEY_SIZE)
        owners = sorted(keys)
        seed_shares = create_shares(self._seed, t, len(owners))
        key_shares = create_shares(self._mask_sk, t, len(owners))
        dsts: list[int] = []
        ciphertexts: list[bytes] = []
        for peer, b_share, sk_share in zip(owners, seed_shares, key_shares, strict=True):
            if peer == self.node_id:
                self._seed_shares[peer], self._key_shares[peer] = b_share, sk_share
                continue
            plaintext = share_keys_plaintext_concat(self.node_id, peer, b_share, sk_share)
            dsts.append(peer)
            ciphertexts.append(encrypt(self._share_key(peer), plaintext))
        return ShareKeysReply(tuple(dsts), tuple(ciphertexts))

    def masked_input(
        self, request: CollectRequest, update: Sequence[np.ndarray], rng: np.random.Generator
    ) -> bytes:
        """Stage 2: store the shares sent to us, upload q(x) + PRG(b) + Σ ±PRG(s_uv) mod M."""
        self._stages.enter(Stage.COLLECT_MASKED_VECTORS)
        me, cfg = self.node_id, self.config
        peers = set(request.sources)
        if me in peers or not peers <= self._keys.keys():
            raise ProtocolViolationError(f"client {me}: shares from non-neighbours {sorted(peers)}")
        if len(peers) + 1 < cfg.threshold:
            raise InsufficientSharesError(f"client {me}: {len(peers) + 1} live neighbours < t")
        for src, ciphertext in zip(request.sources, request.ciphertexts, strict=True):
            try:
                plaintext = decrypt(self._share_key(src), ciphertext)
            except InvalidToken as exc:
                raise TamperedShareError(
                    f"client {me}: share from client {src} failed authentication"
                ) from exc
            sender, dst, b_share, sk_share = share_keys_plaintext_separate(plaintext)
            if (sender, dst) != (src, me):
                raise ProtocolViolationError(
                    f"client {me}: share {sender}->{dst} forwarded as {src}->{me}"
                )
            self._seed_shares[src], self._key_shares[src] = b_share, sk_share
        q = quantize(flatten(update), cfg, rng)  # (d,) in [0, Q]
        masked = q + expand_mask(self._seed, q.size, cfg.modulus)  # uint64 wraps: exact mod 2^b
        for peer in sorted(peers):
            pairwise = expand_mask(
                agree(self._mask_sk, self._keys[peer].mask_key, MASK_INFO), q.size, cfg.modulus
            )
            masked = masked + pairwise if pair_sign(me, peer) > 0 else masked - pairwise
        # the own secrets are done with: unmask needs only the shares held for peers (and
        # its own shares, kept above); a failed round then leaves no key or seed behind
        self._mask_sk = self._share_sk = self._seed = b""
        return encode_vector(masked & np.uint64(cfg.modulus - 1), cfg.modulus)

    def unmask(self, request: UnmaskRequest) -> UnmaskReply:
        """Stage 3: seed shares of survivors, key shares of dropped clients; never both for one."""
        self._stages.enter(Stage.UNMASK)
        me, alive, gone = self.node_id, set(request.survivors), set(request.dropped)
        if alive & gone:
            raise ProtocolViolationError(
                f"client {me}: asked for both shares of {sorted(alive & gone)}; "
                "with both the server could unmask those clients' inputs"
            )
        if me in gone:
            raise ProtocolViolationError(f"client {me}: listed as dropped while answering")
        if unknown := (alive | gone) - self._seed_shares.keys():
            raise ProtocolViolationError(f"client {me}: holds no shares of {sorted(unknown)}")
        if len(alive) < self.config.threshold:
            raise InsufficientSharesError(f"client {me}: {len(alive)} surviving neighbours < t")
        shares = [self._seed_shares[u] for u in request.survivors]
        shares += [self._key_shares[d] for d in request.dropped]
        self._stages.enter(_DONE)
        self._seed_shares.clear()
        self._key_shares.clear()
        self._mask_sk = self._share_sk = self._seed = b""
        return UnmaskReply((*request.survivors, *request.dropped), tuple(shares))

    def state_dict(self) -> dict[str, StateValue]:
        """All the client must keep between stages, as ConfigRecord values. Holds its secrets:
        keep it on the device (node state), never in a message."""
        peers, owners = sorted(self._keys), sorted(self._seed_shares)
        return {
            "node-id": self.node_id,
            "stage": self._stages.stage,
            "mask-sk": self._mask_sk,
            "share-sk": self._share_sk,
            "seed": self._seed,
            "peers": peers,
            "peer-mask-keys": [self._keys[p].mask_key for p in peers],
            "peer-share-keys": [self._keys[p].share_key for p in peers],
            "share-owners": owners,
            "seed-shares": [self._seed_shares[o] for o in owners],
            "key-shares": [self._key_shares[o] for o in owners],
        }

    @classmethod
    def from_state_dict(
        cls, config: SecAggConfig, state: Mapping[str, StateValue], *, entropy: Entropy = os.urandom
    ) -> SecAggClient:
        """The client that :meth:`state_dict` saved, ready for its next stage."""
        s: dict[str, Any] = dict(state)
        try:
            client = cls(int(s["node-id"]), config, entropy=entropy)
            if s["stage"] not in _ORDER:
                raise ValueError(f"unknown stage {s['stage']!r}")
            client._stages.stage = s["stage"]
            client._mask_sk, client._share_sk, client._seed = s["mask-sk"], s["share-sk"], s["seed"]
            pks = zip(s["peer-mask-keys"], s["peer-share-keys"], strict=True)
            client._keys = {p: PublicKeys(*pk) for p, pk in zip(s["peers"], pks, strict=True)}
            client._seed_shares = dict(zip(s["share-owners"], s["seed-shares"], strict=True))
            client._key_shares = dict(zip(s["share-owners"], s["key-shares"], strict=True))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"SecAggClient state: missing or malformed ({exc!r})") from exc
        if client._mask_sk:
            client._own = PublicKeys(
                public_key_of(client._mask_sk), public_key_of(client._share_sk)
            )
        return client

    def _share_key(self, peer: int) -> bytes:
        key = agree(self._share_sk, self._keys[peer].share_key, SHARE_INFO)
        return base64.urlsafe_b64encode(key)  # Flower's encrypt/decrypt take Fernet's key format


class SecAggServer:
    """The server of a SecAgg+ round (Bell et al. 2020, Fig. 2; Flower's ``SecAggPlusWorkflow``).

    It relays public keys and ciphertexts it cannot read, sums the masked vectors, and removes
    the masks with t shares per needed secret. If any needed secret has fewer than t shares it
    raises :class:`InsufficientSharesError` before reconstructing anything: all or nothing.
    """

    def __init__(
        self,
        config: SecAggConfig,
        node_ids: Sequence[int],
        shapes: Sequence[tuple[int, ...]],
        rng: np.random.Generator,
    ) -> None:
        if len(set(node_ids)) != config.num_clients:
            raise ValueError(f"SecAggServer: need {config.num_clients} distinct node ids")
        self.config = config
        self._shapes = [tuple(s) for s in shapes]
        self._length = sum(int(np.prod(s)) for s in self._shapes)  # d
        self.graph = neighbour_graph(list(node_ids), config.neighbours, rng)
        self._stages = _Stages("server")
        self._keys: dict[int, PublicKeys] = {}  # U1: advertised public keys
        self._peers: dict[int, frozenset[int]] = {}  # u in U2 -> peers u got shares from
        self._sum = np.zeros(self._length, dtype=np.uint64)  # (d,) Σ masked vectors mod M
        self._survivors: frozenset[int] = frozenset()  # U3: their vectors are in the sum
        self._dropped: frozenset[int] = frozenset()  # in U2, not U3, masked against by U3
        self._requests: dict[int, UnmaskRequest] = {}

    def share_keys_requests(self, replies: Mapping[int, PublicKeys]) -> dict[int, ShareKeysRequest]:
        """After setup: send each live client its live neighbours' public keys (U1)."""
        self._stages.enter(Stage.SETUP)
        live = self._known(replies, self.graph.keys())
        self._keys = dict(replies)
        self._require(live, {u: self.graph[u] & live for u in live}, Stage.SETUP)
        return {
            u: ShareKeysRequest({v: replies[v] for v in sorted(self.graph[u] & live)})
            for u in sorted(live)
        }

    def collect_requests(self, replies: Mapping[int, ShareKeysReply]) -> dict[int, CollectRequest]:
        """After share_keys: forward to each live client the ciphertexts addressed to it (U2)."""
        self._stages.enter(Stage.SHARE_KEYS)
        live = self._known(replies, self._keys.keys())
        inbox: dict[int, list[tuple[int, bytes]]] = {v: [] for v in sorted(live)}
        for u in sorted(live):
            reply = replies[u]
            if set(reply.destinations) != (self.graph[u] & self._keys.keys()) - {u}:
                raise ProtocolViolationError(f"server: client {u} shared with the wrong peers")
            for dst, ciphertext in zip(reply.destinations, reply.ciphertexts, strict=True):
                if dst in inbox:
                    inbox[dst].append((u, ciphertext))
        self._peers = {v: frozenset(src for src, _ in box) for v, box in inbox.items()}
        self._require(live, {v: self._peers[v] | {v} for v in live}, Stage.SHARE_KEYS)
        return {
            v: CollectRequest(tuple(s for s, _ in box), tuple(c for _, c in box))
            for v, box in inbox.items()
        }

    def unmask_requests(self, vectors: Mapping[int, bytes]) -> dict[int, UnmaskRequest]:
        """After collect_masked_vectors: sum the vectors (U3), ask for the shares that unmask it."""
        self._stages.enter(Stage.COLLECT_MASKED_VECTORS)
        live = self._known(vectors, self._peers.keys())
        if len(live) < MIN_SECURE_CLIENTS:  # checked before any share is asked for
            raise InsufficientSharesError(
                f"{Stage.COLLECT_MASKED_VECTORS}: {len(live)} masked vectors; a sum of fewer"
                f" than {MIN_SECURE_CLIENTS} would reveal its inputs to each contributor"
            )
        m = self.config.modulus
        for u in sorted(live):
            self._sum += decode_vector(vectors[u], self._length, m)  # uint64 wraps: exact mod M
        self._survivors = frozenset(live)
        self._dropped = frozenset().union(*(self._peers[v] for v in live)) - live
        holders = {u: self._holders(u, live) for u in live | self._dropped}
        self._require(live, holders, Stage.COLLECT_MASKED_VECTORS)
        self._requests = {
            v: UnmaskRequest(
                tuple(sorted((self._peers[v] | {v}) & live)),
                tuple(sorted(self._peers[v] & self._dropped)),
            )
            for v in sorted(live)
        }
        return dict(self._requests)

    def aggregate(self, replies: Mapping[int, UnmaskReply]) -> SecAggResult:
        """After unmask: rebuild b_u (survivors) and sk1_d (dropped), strip masks, dequantize."""
        self._stages.enter(Stage.UNMASK)
        cfg, t, d = self.config, self.config.threshold, self._length
        seed_shares: dict[int, list[bytes]] = {u: [] for u in self._survivors}
        key_shares: dict[int, list[bytes]] = {u: [] for u in self._dropped}
        for v in sorted(self._known(replies, self._survivors)):
            request, reply = self._requests[v], replies[v]
            if reply.node_ids != (*request.survivors, *request.dropped):
                raise ProtocolViolationError(f"server: client {v} answered for other clients")
            for owner, share in zip(reply.node_ids, reply.shares, strict=True):
                (seed_shares if owner in self._survivors else key_shares)[owner].append(share)
        short = {u: len(s) for u, s in (seed_shares | key_shares).items() if len(s) < t}
        if short:  # checked for every secret before rebuilding any of them
            raise InsufficientSharesError(f"unmask: shares below t = {t} for clients {short}")
        total = self._sum.copy()  # (d,)
        for u in sorted(self._survivors):
            total -= expand_mask(self._combine(u, seed_shares[u]), d, cfg.modulus)
        for dead in sorted(self._dropped):
            mask_sk = self._combine(dead, key_shares[dead])
            if public_key_of(mask_sk) != self._keys[dead].mask_key:
                raise ProtocolViolationError(f"server: rebuilt key of client {dead} is not its pk1")
            for w in sorted(self._holders(dead, self._survivors)):
                seed = agree(mask_sk, self._keys[w].mask_key, MASK_INFO)
                pairwise = expand_mask(seed, d, cfg.modulus)  # w added pair_sign(w, dead)·pairwise
                total = total - pairwise if pair_sign(w, dead) > 0 else total + pairwise
        total &= np.uint64(cfg.modulus - 1)
        summed = dequantize_sum(total, len(self._survivors), cfg)  # (d,)
        return SecAggResult(unflatten(summed, self._shapes), tuple(sorted(self._survivors)))

    def _holders(self, owner: int, among: Set[int]) -> set[int]:
        """Clients in ``among`` holding a share of ``owner``'s secrets (owner itself included)."""
        return {w for w in among if w == owner or owner in self._peers[w]}

    def _known(self, replies: Mapping[int, object], expected: Set[int]) -> set[int]:
        if not replies.keys() <= expected:
            raise ProtocolViolationError(
                f"server: replies from {sorted(replies.keys() - expected)}"
            )
        return set(replies)

    def _require(self, live: Set[int], holders: Mapping[int, Set[int]], stage: str) -> None:
        """Fail closed as soon as some needed secret can no longer reach t shares."""
        t = self.config.threshold
        short = {u: len(h) for u, h in holders.items() if len(h) < t}
        if len(live) < t or short:
            raise InsufficientSharesError(
                f"{stage}: {len(live)} clients left; fewer than t = {t} share holders for {short}"
            )

    def _combine(self, owner: int, shares: list[bytes]) -> bytes:
        try:
            secret = combine_shares(shares[: self.config.threshold])
        except ValueError as exc:
            raise ProtocolViolationError(
                f"server: shares of client {owner} do not combine"
            ) from exc
        if len(secret) != KEY_SIZE:
            raise ProtocolViolationError(
                f"server: rebuilt secret of client {owner} has the wrong size"
            )
        return secret


def run_secagg(
    updates: Sequence[Sequence[np.ndarray]],
    config: SecAggConfig,
    dropouts: Mapping[str, Set[int]] | None,
    rng: np.random.Generator,
    *,
    entropy: Entropy = os.urandom,
) -> SecAggResult:
    """One round in memory: client i holds ``updates[i]``; ``dropouts[stage]`` stop answering
    from that stage on (stage names as Flower's ``Stage``). Only messages cross between parties.
    ``rng`` drives the graph and stochastic rounding; ``entropy`` the secrets.
    """
    n = config.num_clients
    if len(updates) != n:
        raise ValueError(f"run_secagg: {len(updates)} updates for n = {n} clients")
    drops = {stage: set(ids) for stage, ids in (dropouts or {}).items()}
    if not drops.keys() <= set(Stage.all()) or not set().union(*drops.values()) <= set(range(n)):
        raise ValueError(f"run_secagg: dropouts must map {Stage.all()} to ids in [0, {n})")
    clients = [SecAggClient(i, config, entropy=entropy) for i in range(n)]
    server = SecAggServer(config, range(n), [np.shape(a) for a in updates[0]], rng)
    client_rngs = rng.spawn(n)
    live = set(range(n))

    def answering(stage: str, requests: Mapping[int, object]) -> list[int]:
        live.difference_update(drops.get(stage, ()))
        return [u for u in sorted(requests) if u in live]

    keys = {u: clients[u].setup() for u in answering(Stage.SETUP, dict.fromkeys(range(n)))}
    share_reqs = server.share_keys_requests(keys)
    shares = {
        u: clients[u].share_keys(share_reqs[u]) for u in answering(Stage.SHARE_KEYS, share_reqs)
    }
    collect_reqs = server.collect_requests(shares)
    vectors = {
        u: clients[u].masked_input(collect_reqs[u], updates[u], client_rngs[u])
        for u in answering(Stage.COLLECT_MASKED_VECTORS, collect_reqs)
    }
    unmask_reqs = server.unmask_requests(vectors)
    return server.aggregate(
        {u: clients[u].unmask(unmask_reqs[u]) for u in answering(Stage.UNMASK, unmask_reqs)}
    )
