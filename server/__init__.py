"""fedrec.server: the Flower ServerApp. It holds the public catalog and the shared model only.

app         the ServerApp and ``run_federation``: one run, start to run folder
factory     the strategy of a run, composed: RoundRecorder(NormBounding?(DPFedAvg?(ServerStep)))
recorder    the round driver: cohorts, evaluation schedule, per-round records
validation  every reply checked before anything aggregates it
exchange    the compressed exchange: models encoded down, updates decoded up
robust      norm bounding of each update and each of its item rows before averaging
cohorts     who takes part: exact, fraction or Poisson samplers; the cohort's grid view
dp_fedavg   user-level DP-FedAvg around the server optimizer, and the record-level tally
optimizer   Flower's server step with a schedule, weight decay and its state
checkpoint  the shared model, optimizer state and ε ledger after every round
summary     what metrics.json says about the run
superlink   a real deployment: the SuperLink over TLS and the runs submitted to it
wrapper     the base of the strategy layers
"""

__all__ = [
    "app",
    "checkpoint",
    "cohorts",
    "dp_fedavg",
    "exchange",
    "factory",
    "optimizer",
    "recorder",
    "robust",
    "summary",
    "superlink",
    "validation",
    "wrapper",
]
