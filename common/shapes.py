"""The seed model's layout without the model: its configuration, its parameter names and the
shared group's shapes over a catalog, in plain Python (no torch).

Every message a device serves checks what it sends against :func:`shared_shapes` (the
guard mod, the exchange, SecAgg+), and a deployed device trains and evaluates in NumPy
(client/local_model.py): neither may load torch for it. ``fedrec.common.model`` (the torch
:class:`~fedrec.common.model.SeedModel`) builds on the same :class:`ModelConfig`, and
tests/common/test_model.py pins these shapes to that model's ``named_parameters()``.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedrec.common.data.catalog import Catalog

__all__ = [
    "CATALOG_KEYS",
    "ITEM_TABLE",
    "PARAMETER_NAMES",
    "PRIVATE_KEYS",
    "ModelConfig",
    "device_config",
    "parameter_shapes",
    "shared_shapes",
]

PRIVATE_KEYS = ("user_embedding.weight", "user_features")
CATALOG_KEYS = ("item_features",)
ITEM_TABLE = "item_embedding.weight"  # the item-id table's name in the shared group
# every trainable parameter, in the order of SeedModel.named_parameters() (the wire order)
PARAMETER_NAMES = (
    "user_embedding.weight",
    ITEM_TABLE,
    "user_tower.weight",
    "user_tower.bias",
    "item_tower.weight",
    "item_tower.bias",
    "head.weight",
    "head.bias",
)


@dataclass(frozen=True)
class ModelConfig:
    num_users: int  # rows of the user-id table (1 on a device: its own user)
    num_items: int  # catalog size
    user_feature_dim: int  # width of the user feature vector (0 if none)
    item_feature_dim: int  # width of the item feature vector (genres, text embedding)
    id_dim: int = 32  # width of the user-id and item-id embeddings
    dim: int = 32  # width of u and v
    init_std: float = 0.1  # std of the id-embedding initialisation
    item_ids: bool = True  # an item-id table (False: items are their features alone)

    def __post_init__(self) -> None:
        for name in ("num_users", "num_items", "id_dim", "dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"ModelConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("user_feature_dim", "item_feature_dim"):
            if getattr(self, name) < 0:
                raise ValueError(f"ModelConfig.{name} must be >= 0, got {getattr(self, name)}")
        if not self.item_ids and self.item_feature_dim == 0:
            raise ValueError(
                "a model without item ids scores items from their features, and this catalog"
                " has none: build the catalog with genres or text (fedrec catalog build"
                " --embed), or keep the item-id table"
            )

    @property
    def item_id_dim(self) -> int:
        """Width of the item-id part of g: id_dim, or 0 without an item-id table."""
        return self.id_dim if self.item_ids else 0


def device_config(catalog: Catalog, dim: int, item_ids: bool = True) -> ModelConfig:
    """The one-user model over ``catalog`` that every device and the server share."""
    return ModelConfig(
        num_users=1,
        num_items=catalog.num_items,
        user_feature_dim=catalog.user_feature_dim,
        item_feature_dim=catalog.item_feature_dim,
        id_dim=dim,
        dim=dim,
        item_ids=item_ids,
    )


def parameter_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every trainable parameter's shape, in :data:`PARAMETER_NAMES` order (nn.Linear keeps
    its weight as (out, in))."""
    shapes: dict[str, tuple[int, ...]] = {
        "user_embedding.weight": (config.num_users, config.id_dim),
        ITEM_TABLE: (config.num_items, config.id_dim),
        "user_tower.weight": (config.dim, config.id_dim + config.user_feature_dim),
        "user_tower.bias": (config.dim,),
        "item_tower.weight": (config.dim, config.item_id_dim + config.item_feature_dim),
        "item_tower.bias": (config.dim,),
        "head.weight": (1, config.dim),
        "head.bias": (1,),
    }
    if not config.item_ids:
        del shapes[ITEM_TABLE]
    return shapes


def shared_shapes(
    catalog: Catalog, dim: int, *, item_ids: bool = True
) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the shared group over ``catalog`` (what may leave a device), in
    the wire order: every parameter but the private user row."""
    shapes = parameter_shapes(device_config(catalog, dim, item_ids))
    return {name: shape for name, shape in shapes.items() if name not in PRIVATE_KEYS}
