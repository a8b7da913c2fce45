"""Tests for fedrec.common.secagg.primitives and fedrec.common.secagg.protocol: the SecAgg+ core."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from typing import Any
from unittest import mock

import numpy as np
import pytest
from cryptography.fernet import InvalidToken
from flwr.common.secure_aggregation.secaggplus_constants import Stage
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy import stats

from fedrec.common.secagg import protocol as secagg
from fedrec.common.secagg.primitives import (
    MASK_INFO,
    SHARE_INFO,
    CollectRequest,
    Entropy,
    InsufficientSharesError,
    ProtocolViolationError,
    SecAggConfig,
    TamperedShareError,
    UnmaskRequest,
    agree,
    decode_vector,
    dequantize_sum,
    encode_vector,
    expand_mask,
    generate_keypair,
    neighbour_graph,
    quantize,
)
from fedrec.common.secagg.protocol import SecAggClient, SecAggServer, run_secagg

FULL = SecAggConfig(num_clients=7, threshold=4)  # SecAgg: k = 6, 7 shares per secret
PLUS = SecAggConfig(num_clients=12, num_neighbours=4, threshold=3)  # SecAgg+: k = 4 < n − 1
TINY = SecAggConfig(
    num_clients=3, threshold=2, clipping_range=1.0, quantization_range=4, modulus=16
)
SHAPES = ((3, 4), (5,))
STAGES = Stage.all()  # setup, share_keys, collect_masked_vectors, unmask


def entropy(seed: int) -> Entropy:
    """Reproducible 'secret' bytes: tests only (the default is os.urandom)."""
    return random.Random(seed).randbytes


def make_updates(n: int, seed: int = 0, scale: float = 3.0) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [[rng.normal(scale=scale, size=s) for s in SHAPES] for _ in range(n)]


def clipped_sum(
    updates: list[list[np.ndarray]], ids: tuple[int, ...], c: float
) -> list[np.ndarray]:
    return [sum(np.clip(updates[i][j], -c, c) for i in ids) for j in range(len(SHAPES))]


def assert_close_sum(
    result: secagg.SecAggResult, updates: list[list[np.ndarray]], cfg: SecAggConfig
) -> None:
    expected = clipped_sum(updates, result.contributors, cfg.clipping_range)
    bound = cfg.max_sum_error(len(result.contributors))
    for got, want in zip(result.total, expected, strict=True):
        assert got.shape == want.shape
        assert np.max(np.abs(got - want)) < bound


def start_round(
    cfg: SecAggConfig, seed: int = 0
) -> tuple[list[SecAggClient], SecAggServer, dict[int, CollectRequest]]:
    """Clients and server of one round with nobody dropping, run up to the collect stage."""
    secrets = entropy(seed)  # one stream for all clients: each draws its own keys from it
    clients = [SecAggClient(i, cfg, entropy=secrets) for i in range(cfg.num_clients)]
    server = SecAggServer(cfg, range(cfg.num_clients), SHAPES, np.random.default_rng(seed))
    share_reqs = server.share_keys_requests({c.node_id: c.setup() for c in clients})
    return (
        clients,
        server,
        server.collect_requests({u: clients[u].share_keys(r) for u, r in share_reqs.items()}),
    )


# --- configuration ---------------------------------------------------------------------------


def test_config_derived_values() -> None:
    cfg = SecAggConfig(num_clients=5, threshold=3)
    assert (cfg.neighbours, cfg.num_shares) == (4, 5)  # full graph: k = n − 1
    assert cfg.step == 2**-18  # Δ = 2c/Q = 16 / 2^22
    assert cfg.max_sum_error(5) == 1.9073486328125e-05  # 5 · 2^-18
    assert PLUS.neighbours == 4 and PLUS.num_shares == 5


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_clients": 2, "threshold": 1}, "n ≥ 3"),
        ({"num_clients": 10, "num_neighbours": 3, "threshold": 3}, "must be even"),
        ({"num_clients": 10, "num_neighbours": 10, "threshold": 6}, "2 ≤ k ≤ n − 1"),
        ({"num_clients": 10, "num_neighbours": 4, "threshold": 5}, "2 ≤ t ≤ k"),
        ({"num_clients": 10, "num_neighbours": 4, "threshold": 2}, "2t > k \\+ 1"),
        ({"num_clients": 5, "threshold": True}, "must be an int"),
        ({"num_clients": 5, "threshold": 3, "clipping_range": 0.0}, "finite c > 0"),
        ({"num_clients": 5, "threshold": 3, "clipping_range": float("inf")}, "finite c > 0"),
        ({"num_clients": 5, "threshold": 3, "quantization_range": 0}, "Q ≥ 1"),
        ({"num_clients": 5, "threshold": 3, "modulus": 3 * 2**30}, "power of two"),
        ({"num_clients": 5, "threshold": 3, "modulus": 2**65}, "power of two"),
        # 5 · 2^22 = 20971520 ≥ 2^24 = 16777216: the sum would wrap around
        ({"num_clients": 5, "threshold": 3, "modulus": 2**24}, "M > n·Q"),
    ],
)
def test_config_rejects(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SecAggConfig(**kwargs)


@given(n=st.integers(3, 40), half=st.integers(1, 19), seed=st.integers(0, 2**32 - 1))
def test_neighbour_graph_is_symmetric_and_regular(n: int, half: int, seed: int) -> None:
    k = min(2 * half, n - 1)
    graph = neighbour_graph(list(range(n)), k, np.random.default_rng(seed))
    for u, nbrs in graph.items():
        assert u in nbrs and len(nbrs) == k + 1
        assert all(u in graph[v] for v in nbrs)


# --- quantization, masks, keys ---------------------------------------------------------------


def test_quantize_known_values() -> None:
    # c = 1, Q = 4: y = (clip(x) + 1) · 2 is an integer for all of these, so rounding is exact
    x = np.array([-3.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0])
    q = quantize(x, TINY, np.random.default_rng(0))
    np.testing.assert_array_equal(q, [0, 0, 1, 2, 3, 4, 4])
    assert q.dtype == np.uint64
    # Δ = 0.5: Σq · Δ − 2c for two inputs
    np.testing.assert_array_equal(dequantize_sum(np.array([0, 4, 8]), 2, TINY), [-2.0, 0.0, 2.0])


def test_quantize_is_unbiased() -> None:
    x = np.full(20_000, -0.85)  # y = 0.3: q = 1 with probability 0.3
    q = quantize(x, TINY, np.random.default_rng(1))
    assert set(np.unique(q)) == {0, 1}
    assert abs(q.mean() - 0.3) < 0.01  # 3σ = 3 · sqrt(0.21 / 20000) ≈ 0.0097


@given(
    x=hnp.arrays(np.float64, st.integers(1, 50), elements=st.floats(-1e6, 1e6)),
    seed=st.integers(0, 2**32 - 1),
)
def test_quantize_error_below_one_step(x: np.ndarray, seed: int) -> None:
    cfg = PLUS
    q = quantize(x, cfg, np.random.default_rng(seed))
    assert q.max() <= cfg.quantization_range
    recovered = q * cfg.step - cfg.clipping_range
    assert np.all(np.abs(recovered - np.clip(x, -8, 8)) < cfg.step)


def test_quantize_rejects_non_finite() -> None:
    with pytest.raises(ValueError, match="non-finite"):
        quantize(np.array([0.0, np.nan]), TINY, np.random.default_rng(0))


def test_expand_mask_is_the_chacha20_keystream() -> None:
    # RFC 8439 A.1 test vector 1 (key 0, nonce 0, counter 0): 76 b8 e0 ad a0 f1 3d 90 40 5d ...
    words = expand_mask(bytes(32), 2, 2**64)
    assert words.tolist() == [0x903DF1A0ADE0B876, 0x28BD8653E56A5D40]
    assert expand_mask(bytes(32), 2, 2**32).tolist() == [0xADE0B876, 0xE56A5D40]
    with pytest.raises(ValueError, match="32-byte seed"):
        expand_mask(bytes(16), 2, 2**32)


def test_agree_is_symmetric_and_separates_purposes() -> None:
    sk_a, pk_a = generate_keypair(entropy(0))
    sk_b, pk_b = generate_keypair(entropy(1))
    assert agree(sk_a, pk_b, MASK_INFO) == agree(sk_b, pk_a, MASK_INFO)
    assert agree(sk_a, pk_b, MASK_INFO) != agree(sk_a, pk_b, SHARE_INFO)


def test_vector_wire_format() -> None:
    v = np.array([0, 5, 2**20 - 1], dtype=np.uint64)
    data = encode_vector(v, 2**20)
    assert len(data) == 12  # 4 bytes per value for M ≤ 2^32
    np.testing.assert_array_equal(decode_vector(data, 3, 2**20), v)
    with pytest.raises(ProtocolViolationError, match="bytes"):
        decode_vector(data, 4, 2**20)
    with pytest.raises(ProtocolViolationError, match="≥ M"):
        decode_vector(encode_vector(np.array([2**20]), 2**20), 1, 2**20)


# --- the protocol -----------------------------------------------------------------------------


@pytest.mark.parametrize("cfg", [FULL, PLUS], ids=["secagg-full-graph", "secagg+-k4"])
def test_sum_matches_plaintext_within_quantization_error(cfg: SecAggConfig) -> None:
    updates = make_updates(cfg.num_clients)
    result = run_secagg(updates, cfg, {}, np.random.default_rng(0))
    assert result.contributors == tuple(range(cfg.num_clients))
    assert_close_sum(result, updates, cfg)


@pytest.mark.parametrize("cfg", [FULL, PLUS], ids=["secagg-full-graph", "secagg+-k4"])
def test_sum_is_exact_on_the_quantization_grid(cfg: SecAggConfig) -> None:
    # c = 1, Q = 2^10: inputs j·Δ − c quantize without rounding, so every mask must cancel
    # to the last bit, dropped clients' pairwise masks included.
    cfg = SecAggConfig(
        num_clients=cfg.num_clients,
        num_neighbours=cfg.num_neighbours,
        threshold=cfg.threshold,
        clipping_range=1.0,
        quantization_range=2**10,
        modulus=2**16,
    )
    rng = np.random.default_rng(3)
    updates = [
        [rng.integers(0, 2**10 + 1, size=s) * cfg.step - 1.0 for s in SHAPES]
        for _ in range(cfg.num_clients)
    ]
    drops = {Stage.COLLECT_MASKED_VECTORS: {1}, Stage.UNMASK: {2}}
    result = run_secagg(updates, cfg, drops, np.random.default_rng(0))
    assert 1 not in result.contributors and 2 in result.contributors
    for got, want in zip(result.total, clipped_sum(updates, result.contributors, 1.0), strict=True):
        np.testing.assert_array_equal(got, want)


def test_masked_upload_is_uniform_on_z_m() -> None:
    cfg = SecAggConfig(num_clients=5, threshold=3)  # M = 2^32
    clients, _, reqs = start_round(cfg, seed=0)
    d = 40_000
    plain = np.zeros(d)  # the worst case: every coordinate quantizes to the same Q/2
    upload = clients[0].masked_input(reqs[0], [plain], np.random.default_rng(0))
    y = decode_vector(upload, d, cfg.modulus).astype(np.float64) / cfg.modulus  # (d,) in [0, 1)
    counts, _ = np.histogram(y, bins=256, range=(0.0, 1.0))
    assert stats.chisquare(counts).pvalue > 1e-3
    assert stats.kstest(y, "uniform").pvalue > 1e-3
    # the same tests do see the unmasked input
    q = quantize(plain, cfg, np.random.default_rng(0)) / cfg.modulus
    assert stats.kstest(q, "uniform").pvalue < 1e-100


@pytest.mark.parametrize("stage", STAGES)
def test_dropouts_at_each_stage_are_survived(stage: str) -> None:
    updates = make_updates(FULL.num_clients)
    result = run_secagg(updates, FULL, {stage: {1, 5}}, np.random.default_rng(0))
    # a client that drops during unmask already uploaded: its input is in the sum
    expected = range(7) if stage == Stage.UNMASK else (0, 2, 3, 4, 6)
    assert result.contributors == tuple(expected)
    assert_close_sum(result, updates, FULL)


def test_secagg_plus_survives_dropouts_at_every_stage_together() -> None:
    # One client drops at each stage, no two of them neighbours: every neighbourhood keeps
    # ≥ 3 = t share holders (a third of the round is lost, far more than k − t = 1 per client).
    graph = neighbour_graph(list(range(12)), 4, np.random.default_rng(0))  # the server's graph
    spread = next(
        ids
        for ids in itertools.combinations(range(12), 4)
        if all(v not in graph[u] for u, v in itertools.combinations(ids, 2))
    )
    updates = make_updates(PLUS.num_clients)
    drops = {stage: {u} for stage, u in zip(STAGES, spread, strict=True)}
    result = run_secagg(updates, PLUS, drops, np.random.default_rng(0))
    assert set(result.contributors) == set(range(12)) - set(spread[:3])  # unmask-drop uploaded
    assert_close_sum(result, updates, PLUS)


@pytest.mark.parametrize("stage", STAGES)
def test_below_threshold_fails_closed(stage: str) -> None:
    # 4 of 7 drop: 3 < t = 4 remain. No secret may be rebuilt and no sum returned.
    spy = mock.Mock(side_effect=secagg.combine_shares)
    with mock.patch.object(secagg, "combine_shares", spy), pytest.raises(InsufficientSharesError):
        run_secagg(make_updates(7), FULL, {stage: {0, 2, 4, 6}}, np.random.default_rng(0))
    spy.assert_not_called()


def test_secagg_plus_fails_closed_when_one_neighbourhood_falls_below_t() -> None:
    # 9 of 12 remain (≫ t = 3), but client 0 loses 3 of its 4 neighbours: its self-mask seed
    # has 2 < t holders left, so the round must stop rather than return a partial sum.
    graph = neighbour_graph(list(range(12)), 4, np.random.default_rng(0))  # the server's graph
    lost = set(sorted(graph[0] - {0})[:3])
    spy = mock.Mock(side_effect=secagg.combine_shares)
    with (
        mock.patch.object(secagg, "combine_shares", spy),
        pytest.raises(InsufficientSharesError, match="holders"),
    ):
        run_secagg(
            make_updates(12), PLUS, {Stage.COLLECT_MASKED_VECTORS: lost}, np.random.default_rng(0)
        )
    spy.assert_not_called()


def test_each_client_talks_to_its_k_neighbours_only() -> None:
    _, server, reqs = start_round(PLUS)
    for v, req in reqs.items():
        assert set(req.sources) == server.graph[v] - {v} and len(req.sources) == PLUS.neighbours


def test_tampered_share_is_rejected() -> None:
    clients, _, reqs = start_round(FULL)
    req = reqs[0]
    forged = bytearray(req.ciphertexts[1])
    forged[len(forged) // 2] ^= 1
    tampered = CollectRequest(
        req.sources, (req.ciphertexts[0], bytes(forged), *req.ciphertexts[2:])
    )
    with pytest.raises(TamperedShareError, match=f"from client {req.sources[1]}") as info:
        clients[0].masked_input(tampered, [np.zeros(s) for s in SHAPES], np.random.default_rng(0))
    assert isinstance(info.value.__cause__, InvalidToken)


def test_misrouted_share_is_rejected() -> None:
    clients, _, reqs = start_round(FULL)
    # client 1's ciphertext for client 0 handed to client 2 as if it were for client 2
    swapped = CollectRequest(
        reqs[2].sources,
        tuple(
            reqs[0].ciphertexts[reqs[0].sources.index(1)] if s == 1 else c
            for s, c in zip(reqs[2].sources, reqs[2].ciphertexts, strict=True)
        ),
    )
    with pytest.raises(TamperedShareError):
        clients[2].masked_input(swapped, [np.zeros(s) for s in SHAPES], np.random.default_rng(0))


@pytest.mark.parametrize(
    ("survivors", "dropped", "match"),
    [
        ((0, 1, 2, 3), (1,), "both shares of \\[1\\]"),  # the core safety rule
        ((1, 2, 3, 4), (0,), "listed as dropped"),
        ((0, 1, 2, 99), (), "holds no shares of \\[99\\]"),
        ((0, 1, 2), (3,), "surviving neighbours < t"),
    ],
)
def test_client_refuses_unsafe_unmask_requests(
    survivors: tuple, dropped: tuple, match: str
) -> None:
    clients, _, reqs = start_round(FULL)
    clients[0].masked_input(reqs[0], [np.zeros(s) for s in SHAPES], np.random.default_rng(0))
    with pytest.raises((ProtocolViolationError, InsufficientSharesError), match=match):
        clients[0].unmask(UnmaskRequest(survivors, dropped))


def test_client_answers_unmask_once() -> None:
    clients, _, reqs = start_round(FULL)
    clients[0].masked_input(reqs[0], [np.zeros(s) for s in SHAPES], np.random.default_rng(0))
    clients[0].unmask(UnmaskRequest((0, 1, 2, 3, 4), (5, 6)))
    with pytest.raises(ProtocolViolationError, match="stage"):  # e.g. now asking for 1's key
        clients[0].unmask(UnmaskRequest((0, 2, 3, 4), (1,)))


def test_stages_must_come_in_order() -> None:
    client = SecAggClient(0, FULL)
    with pytest.raises(ProtocolViolationError, match="'share_keys' after 'new'"):
        client.share_keys(secagg.ShareKeysRequest({}))
    server = SecAggServer(FULL, range(7), SHAPES, np.random.default_rng(0))
    with pytest.raises(ProtocolViolationError, match="'share_keys' after 'new'"):
        server.collect_requests({})


def test_server_rejects_a_vector_of_the_wrong_size() -> None:
    clients, server, reqs = start_round(FULL)
    vectors = {
        u: clients[u].masked_input(r, [np.zeros(s) for s in SHAPES], np.random.default_rng(u))
        for u, r in reqs.items()
    }
    vectors[3] = vectors[3][:-4]
    with pytest.raises(ProtocolViolationError, match="masked vector"):
        server.unmask_requests(vectors)


@settings(max_examples=25, deadline=None)
@given(drops=st.lists(st.none() | st.sampled_from(STAGES), min_size=7, max_size=7))
def test_random_dropouts_sum_or_fail_closed(drops: list[str | None]) -> None:
    """Client i drops at drops[i] (or never): the round returns the right sum over exactly
    the clients that uploaded iff ≥ t remain at every stage; no client is ever asked for both
    shares of one peer."""
    dropouts: dict[str, set[int]] = {}
    for i, stage in enumerate(drops):
        if stage is not None:
            dropouts.setdefault(stage, set()).add(i)
    live, enough = set(range(7)), True
    for stage in STAGES:  # full graph: every live client holds every share
        live -= dropouts.get(stage, set())
        enough &= len(live) >= FULL.threshold
    updates = make_updates(7)
    original = SecAggClient.unmask
    with mock.patch.object(SecAggClient, "unmask", autospec=True, side_effect=original) as spy:
        try:
            result = run_secagg(updates, FULL, dropouts, np.random.default_rng(0))
        except InsufficientSharesError:
            assert not enough
        else:
            assert enough
            uploaded = set(range(7)) - set().union(*(dropouts.get(s, set()) for s in STAGES[:3]))
            assert set(result.contributors) == uploaded
            assert_close_sum(result, updates, FULL)
    for _, request in (c.args for c in spy.call_args_list):
        assert not set(request.survivors) & set(request.dropped)


def test_client_state_survives_a_restart_between_every_stage() -> None:
    """Flower builds the ClientApp anew for each message: the client must resume from its
    saved state (ConfigRecord values only) and still produce the right sum."""
    cfg, n = PLUS, PLUS.num_clients
    updates, secrets = make_updates(n), entropy(0)
    saved = {u: SecAggClient(u, cfg, entropy=secrets).state_dict() for u in range(n)}

    def answer(u: int, call: Callable[[SecAggClient], Any]) -> Any:
        client = SecAggClient.from_state_dict(cfg, saved[u], entropy=secrets)
        reply = call(client)
        saved[u] = client.state_dict()
        assert all(isinstance(v, int | str | bytes | list) for v in saved[u].values())
        return reply

    server = SecAggServer(cfg, range(n), SHAPES, np.random.default_rng(0))
    reqs = server.share_keys_requests({u: answer(u, lambda c: c.setup()) for u in range(n)})
    reqs = server.collect_requests(
        {u: answer(u, lambda c, r=r: c.share_keys(r)) for u, r in reqs.items()}
    )
    rng = np.random.default_rng(1)
    vectors = {
        u: answer(u, lambda c, r=r, u=u: c.masked_input(r, updates[u], rng))
        for u, r in reqs.items()
        if u != 5
    }
    reqs = server.unmask_requests(vectors)
    result = server.aggregate({u: answer(u, lambda c, r=r: c.unmask(r)) for u, r in reqs.items()})
    assert 5 not in result.contributors and len(result.contributors) == n - 1
    assert_close_sum(result, updates, cfg)
    assert saved[0]["stage"] == "done" and saved[0]["seed"] == b""  # secrets dropped at the end
    with pytest.raises(ValueError, match="SecAggClient state"):
        SecAggClient.from_state_dict(cfg, {**saved[0], "stage": "bogus"})


def test_a_sum_of_two_is_never_unmasked() -> None:
    """n = 3, k = 2, t = 2: one client gone after sharing leaves 2 masked vectors. Enough
    shares exist, but each of the two would learn the other's input from the sum."""
    cfg = SecAggConfig(num_clients=3, threshold=2)
    spy = mock.Mock(side_effect=secagg.combine_shares)
    with (
        mock.patch.object(secagg, "combine_shares", spy),
        pytest.raises(InsufficientSharesError, match="fewer than 3"),
    ):
        run_secagg(
            make_updates(3), cfg, {Stage.COLLECT_MASKED_VECTORS: {2}}, np.random.default_rng(0)
        )
    spy.assert_not_called()


def test_own_secrets_are_dropped_after_masking() -> None:
    """After its upload a client keeps only the shares it holds (for unmask): a round that
    fails later leaves no key or self-mask seed on the device."""
    cfg, n = FULL, FULL.num_clients
    clients = [SecAggClient(u, cfg, entropy=entropy(u)) for u in range(n)]
    server = SecAggServer(cfg, range(n), SHAPES, np.random.default_rng(0))
    reqs = server.share_keys_requests({u: c.setup() for u, c in enumerate(clients)})
    reqs = server.collect_requests({u: clients[u].share_keys(r) for u, r in reqs.items()})
    clients[0].masked_input(reqs[0], make_updates(1)[0], np.random.default_rng(0))
    state = clients[0].state_dict()
    assert state["mask-sk"] == state["share-sk"] == state["seed"] == b""
    assert len(state["seed-shares"]) == n  # its own share and one from each peer
