"""Names of message records, metric keys and run-config keys: one place, no string typos.

Config keys are kebab-case, as Flower's ``[tool.flwr.app.config]`` expects.
"""

from __future__ import annotations

__all__ = [
    "ARRAYS",
    "BUDGET_EXHAUSTED",
    "CATALOG_HASH",
    "CLIPPING_NORM",
    "COLD_PREFIX",
    "COLR_RANK",
    "COLR_SEED",
    "CONFIG",
    "DOWNLOAD_COMPRESSION",
    "ER5",
    "ER10",
    "EVALUATE_METRICS",
    "EVAL_SPLIT",
    "EXPOSURE",
    "FULL_HR",
    "FULL_NDCG",
    "HR",
    "METRICS",
    "NDCG",
    "NUM_EXAMPLES",
    "RECORD_EPSILON",
    "RETURNING",
    "SERVER_ROUND",
    "STATE_COUNTERS",
    "STATE_PRIVATE",
    "STATE_RECORD_LEDGER",
    "TRAIN_LOSS",
    "TRAIN_METRICS",
    "UNIT_WEIGHT",
    "UPLOAD_COMPRESSION",
    "USERS",
    "VAL_PREFIX",
]

# Records inside a Message's RecordDict
ARRAYS = "arrays"  # ArrayRecord: the shared parameters (down) or their update (up)
CONFIG = "config"  # ConfigRecord: per-round instructions
METRICS = "metrics"  # MetricRecord: numbers only, never item ids

# Keys in the node's context.state
STATE_PRIVATE = "fedrec.private"  # ArrayRecord: user embedding row + user features
STATE_COUNTERS = "fedrec.counters"  # MetricRecord: rounds trained, examples seen

# Metric keys
NUM_EXAMPLES = "num-examples"  # FedAvg's weighting key (client-weighting = "examples")
UNIT_WEIGHT = "unit-weight"  # always 1: the weighting key of client-weighting = "uniform"
TRAIN_LOSS = "train-loss"
RETURNING = "returning"  # 1 if the node resumed its stored private state (it trained before)
USERS = "users"
HR = "hr@10"
NDCG = "ndcg@10"
FULL_HR = "full_hr@10"
FULL_NDCG = "full_ndcg@10"
ER5 = "er@5"  # exposure of the run's target items (target-items), common/metrics.exposure
ER10 = "er@10"
VAL_PREFIX = "val-"  # val-hr@10 etc.: the validation item, used to pick the best round
COLD_PREFIX = "cold-"  # cold-hr@10 etc.: the cold target among cold items (common/data/cold.py)

# Config keys sent by the server each round
SERVER_ROUND = "server-round"
CATALOG_HASH = "catalog-hash"  # the SHA-256 of the catalog the round's model is built on
USER_EPSILON = "user-epsilon"  # user-level ε the run reaches with this round (DP-FedAvg)
EVAL_SPLIT = "eval-split"  # "val" or "test"
# the wire form of the model each way (common/compression.py): "none" | "fp16" | "int8"; a
# device that gets either uploads its update Δ, in the upload's form
DOWNLOAD_COMPRESSION = "download-compression"
UPLOAD_COMPRESSION = "upload-compression"
# a low-rank round (common/colr.py): the rank of the item table's factor and its basis seed
COLR_RANK = "colr-rank"
COLR_SEED = "colr-seed"

# Error codes of a device's refusal (its error reply): the server tells a setting that every
# device refuses (stop the run) from devices that fail (a dropout)
PRIVACY_GUARD_ERROR = 4001  # the reply carried something other than the shared group
NON_FINITE_ERROR = 4002  # the update has NaN/inf values (cannot be clipped)
SECAGG_ERROR = 4003  # the device refused a secure-aggregation stage
CATALOG_MISMATCH_ERROR = 4004  # the round is built on another catalog than the device's
PAYLOAD_ERROR = 4005  # the model sent is not a valid payload of the round's compression
SETTING_ERRORS = (PRIVACY_GUARD_ERROR, SECAGG_ERROR, CATALOG_MISMATCH_ERROR, PAYLOAD_ERROR)

# Differential privacy (issue 4)
STATE_RECORD_LEDGER = "fedrec.record-ledger"  # node state: the device's DP-SGD ledger (JSON)
RECORD_EPSILON = "record-epsilon"  # metric: the device's record-level ε after this round
BUDGET_EXHAUSTED = "budget-exhausted"  # metric: 1 if the device declined (local ε budget)
CLIPPING_NORM = "clipping_norm"  # config: user-level clip C (Flower's fixedclipping_mod key)


# What a device may report, per message type: the client's guard and the server's validation
# both allow these keys and no other (a new metric is added here, once)
TRAIN_METRICS = frozenset(
    (NUM_EXAMPLES, UNIT_WEIGHT, TRAIN_LOSS, RETURNING, RECORD_EPSILON, BUDGET_EXHAUSTED)
)
RATES = (HR, NDCG, FULL_HR, FULL_NDCG)
EXPOSURE = (ER5, ER10)  # only when the run names target items
EVALUATE_METRICS = frozenset(
    (
        USERS,
        NUM_EXAMPLES,
        UNIT_WEIGHT,
        *RATES,
        *(VAL_PREFIX + r for r in RATES),
        *(COLD_PREFIX + r for r in RATES),  # only when the run holds out cold items
        *EXPOSURE,
    )
)
