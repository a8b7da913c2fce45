"""fedrec.server: the Flower ServerApp. It holds the public catalog and the shared model only.

app         the ServerApp and ``run_federation``: one run, start to run folder
factory     the strategy of a run, composed: RoundRecorder(DPFedAvg?(ServerStep(Flower)))
recorder    the round driver: cohorts, evaluation schedule, per-round records
cohorts     who takes part: exact, fraction or Poisson samplers; the cohort's grid view
dp_fedavg   user-level DP-FedAvg around the server optimizer, and the record-level tally
optimizer   Flower's server step with a schedule, weight decay and its state
checkpoint  the shared model, optimizer state and ε ledger after every round
summary     what metrics.json says about the run
"""

__all__ = [
    "app",
    "checkpoint",
    "cohorts",
    "dp_fedavg",
    "factory",
    "optimizer",
    "recorder",
    "summary",
]
