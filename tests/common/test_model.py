"""Tests for fedrec.common.model: the two-tower formula and the private/shared parameter split."""

from __future__ import annotations

import pytest
import torch

from fedrec.common.model import (
    CATALOG_KEYS,
    PRIVATE_KEYS,
    ModelConfig,
    SeedModel,
    load_private_state,
    load_shared_state,
    private_state,
    private_state_names,
    shared_parameter_names,
    shared_state,
)

NU, NI, FU, FI = 5, 7, 3, 4


def _model(seed: int = 0, fu: int = FU, fi: int = FI, **kw: int | bool) -> SeedModel:
    torch.manual_seed(seed)
    cfg = ModelConfig(num_users=NU, num_items=NI, user_feature_dim=fu, item_feature_dim=fi, **kw)
    uf = torch.rand(NU, fu)
    itf = (torch.rand(NI, fi) > 0.5).float()
    model = SeedModel(cfg, uf, itf)
    # non-zero biases so a wrong formula cannot hide behind zero-initialised terms
    with torch.no_grad():
        model.head.bias.fill_(0.3)
    return model


def _by_hand(m: SeedModel, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """sigmoid(w_r · (u ⊙ v) + b_r) with u = relu(W_u [e_u; f_u] + b_u), v likewise."""
    h = torch.cat([m.user_embedding.weight[users], m.user_features[users]], dim=1)
    g = torch.cat([m.item_embedding.weight[items], m.item_features[items]], dim=1)
    u = torch.relu(h @ m.user_tower.weight.T + m.user_tower.bias)
    v = torch.relu(g @ m.item_tower.weight.T + m.item_tower.bias)
    return torch.sigmoid((u * v) @ m.head.weight[0] + m.head.bias[0])


# ---------------------------------------------------------------- shapes and formula


def test_forward_shapes() -> None:
    m = _model(id_dim=6, dim=8)
    users = torch.tensor([0, 1, 4, 4])
    items = torch.tensor([6, 0, 3, 3])
    assert m(users, items).shape == (4,)
    assert m.user_vectors(users).shape == (4, 8)
    assert m.item_vectors(items).shape == (4, 8)
    assert m.item_vectors().shape == (NI, 8)
    assert m.score_all(users).shape == (4, NI)
    assert m(users[:0], items[:0]).shape == (0,)


def test_forward_equals_the_formula_by_hand() -> None:
    m = _model(seed=1)
    users = torch.tensor([0, 1, 2, 3, 4, 0, 2])
    items = torch.tensor([0, 1, 2, 3, 4, 5, 6])
    with torch.no_grad():
        got = torch.sigmoid(m(users, items))
        want = _by_hand(m, users, items)
    torch.testing.assert_close(got, want)


def test_formula_without_features() -> None:
    m = _model(seed=2, fu=0, fi=0)
    users = torch.tensor([0, 3, 4])
    items = torch.tensor([6, 2, 2])
    with torch.no_grad():
        torch.testing.assert_close(torch.sigmoid(m(users, items)), _by_hand(m, users, items))


def test_score_all_equals_forward_over_every_item() -> None:
    m = _model(seed=3)
    users = torch.tensor([4, 0, 2])
    with torch.no_grad():
        all_scores = m.score_all(users)
        for row, u in enumerate(users.tolist()):
            each = m(torch.full((NI,), u), torch.arange(NI))
            torch.testing.assert_close(all_scores[row], each)


def test_features_are_copied_and_checked() -> None:
    cfg = ModelConfig(num_users=NU, num_items=NI, user_feature_dim=FU, item_feature_dim=FI)
    uf, itf = torch.zeros(NU, FU), torch.zeros(NI, FI, dtype=torch.float64)
    m = SeedModel(cfg, uf, itf)
    uf += 1
    assert float(m.user_features.sum()) == 0.0  # a copy, not a view
    assert m.item_features.dtype == torch.float32
    with pytest.raises(ValueError, match="user_features"):
        SeedModel(cfg, torch.zeros(NU, FU + 1), itf)
    with pytest.raises(ValueError, match="item_features"):
        SeedModel(cfg, uf, torch.zeros(NI + 1, FI))


# ---------------------------------------------------------------- private / shared split


def test_private_and_shared_partition_the_state_dict() -> None:
    m = _model()
    shared = shared_parameter_names(m)
    private = private_state_names(m)
    assert set(private) == {"user_embedding.weight", "user_features"} == set(PRIVATE_KEYS)
    assert not set(shared) & set(private)
    assert set(shared) | set(private) | set(CATALOG_KEYS) == set(m.state_dict())
    assert not set(shared) & set(CATALOG_KEYS)
    assert set(shared) == {
        "item_embedding.weight",
        "user_tower.weight",
        "user_tower.bias",
        "item_tower.weight",
        "item_tower.bias",
        "head.weight",
        "head.bias",
    }
    # every trainable parameter is either shared or private; item features are not trained
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable == set(shared) | {"user_embedding.weight"}
    assert shared == shared_parameter_names(_model(seed=9))  # stable order


def test_gradient_of_one_user_touches_no_other_user_row() -> None:
    m = _model(seed=4)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(
        m(torch.tensor([2]), torch.tensor([5])), torch.ones(1)
    )
    loss.backward()
    grad = m.user_embedding.weight.grad
    assert grad is not None
    others = [u for u in range(NU) if u != 2]
    assert torch.count_nonzero(grad[others]) == 0
    assert torch.count_nonzero(grad[2]) > 0
    # only item 5's embedding row moves too
    igrad = m.item_embedding.weight.grad
    assert igrad is not None
    assert torch.count_nonzero(igrad[[i for i in range(NI) if i != 5]]) == 0


def test_shared_state_returns_detached_copies() -> None:
    m = _model()
    state = shared_state(m)
    assert list(state) == shared_parameter_names(m)
    before = m.head.bias.detach().clone()
    for t in state.values():
        assert not t.requires_grad
        t.add_(1.0)
    torch.testing.assert_close(m.head.bias.detach(), before)
    priv = private_state(m)
    assert set(priv) == set(PRIVATE_KEYS)
    priv["user_embedding.weight"].zero_()
    assert torch.count_nonzero(m.user_embedding.weight) > 0


def test_load_shared_state_round_trip() -> None:
    a, b = _model(seed=5), _model(seed=6)
    load_shared_state(b, shared_state(a))
    for name in shared_parameter_names(a):
        torch.testing.assert_close(b.state_dict()[name], a.state_dict()[name])
    # the private part of b is untouched
    assert not torch.equal(b.user_embedding.weight, a.user_embedding.weight)


def test_load_private_state_round_trip() -> None:
    a, b = _model(seed=5), _model(seed=6)
    load_private_state(b, private_state(a))
    torch.testing.assert_close(b.user_embedding.weight, a.user_embedding.weight)
    torch.testing.assert_close(b.user_features, a.user_features)
    assert not torch.equal(b.head.weight, a.head.weight)


def test_load_shared_state_rejects_missing_key() -> None:
    m = _model()
    state = shared_state(m)
    del state["head.bias"]
    with pytest.raises(ValueError, match=r"missing \['head.bias'\]"):
        load_shared_state(m, state)


def test_load_shared_state_rejects_extra_key() -> None:
    m = _model()
    state = shared_state(m)
    state["user_embedding.weight"] = m.user_embedding.weight.detach().clone()
    with pytest.raises(ValueError, match=r"unexpected \['user_embedding\.weight'\]"):
        load_shared_state(m, state)


def test_load_shared_state_rejects_wrong_shape_and_changes_nothing() -> None:
    m = _model()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    state = {k: v + 1.0 for k, v in shared_state(m).items()}
    state["head.weight"] = torch.zeros(1, 99)
    with pytest.raises(ValueError, match=r"'head.weight'.*\(1, 32\).*\(1, 99\)"):
        load_shared_state(m, state)
    # a rejected update is not half-applied
    for k, v in m.state_dict().items():
        torch.testing.assert_close(v, before[k], msg=f"{k} changed by a rejected load")


def test_load_private_state_rejects_shared_keys() -> None:
    m = _model()
    with pytest.raises(ValueError, match="private state mismatch"):
        load_private_state(m, shared_state(m))


# ---------------------------------------------------------------- config validation


@pytest.mark.parametrize("field", ["num_users", "num_items", "id_dim", "dim"])
def test_config_rejects_non_positive_sizes(field: str) -> None:
    kw = {"num_users": 2, "num_items": 2, "user_feature_dim": 0, "item_feature_dim": 0}
    kw[field] = 0
    with pytest.raises(ValueError, match=f"ModelConfig.{field}"):
        ModelConfig(**kw)


@pytest.mark.parametrize("field", ["user_feature_dim", "item_feature_dim"])
def test_config_rejects_negative_feature_dims(field: str) -> None:
    kw = {"num_users": 2, "num_items": 2, "user_feature_dim": 0, "item_feature_dim": 0}
    kw[field] = -1
    with pytest.raises(ValueError, match=f"ModelConfig.{field}"):
        ModelConfig(**kw)


def test_config_defaults_and_frozen() -> None:
    cfg = ModelConfig(num_users=1, num_items=1, user_feature_dim=0, item_feature_dim=0)
    assert (cfg.id_dim, cfg.dim) == (32, 32)
    with pytest.raises(AttributeError):
        cfg.dim = 3  # type: ignore[misc]


# ---------------------------------------------------------------- without item ids


def test_without_item_ids_an_item_is_its_features_alone() -> None:
    """item_ids=False: no item-id table, g = [item features], so two items with the same
    features score the same for every user, every item scores as a cold one does, and the
    shared group is the towers and the head only: (F_i·d + d) + ((id + F_u)·d + d) + d + 1."""
    m = _model(item_ids=False, id_dim=6, dim=8)
    assert m.item_embedding is None and m.config.item_id_dim == 0
    assert "item_embedding.weight" not in shared_parameter_names(m)
    size = sum(v.numel() for v in shared_state(m).values())
    assert size == (FI * 8 + 8) + ((6 + FU) * 8 + 8) + 8 + 1
    with torch.no_grad():
        m.item_features[5] = m.item_features[2]
        users = torch.arange(NU)
        scores = m.score_all(users)
        torch.testing.assert_close(scores[:, 5], scores[:, 2])
        torch.testing.assert_close(m.score_from_features(users, torch.arange(NI)), scores)
        v = torch.relu(m.item_features @ m.item_tower.weight.T + m.item_tower.bias)
        torch.testing.assert_close(m.item_vectors(), v)
        torch.testing.assert_close(m.item_vectors(torch.tensor([3, 1])), v[[3, 1]])


def test_without_item_ids_the_catalog_must_have_item_features() -> None:
    with pytest.raises(ValueError, match="scores items from their features, and this catalog"):
        ModelConfig(num_users=1, num_items=3, user_feature_dim=0, item_feature_dim=0,
                    item_ids=False)  # fmt: skip
