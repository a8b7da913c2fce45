"""fedrec.server: the Flower ServerApp. It holds the public catalog and the shared model only.

app         the ServerApp and ``run_federation``: compose a run's layers, run it, write its folder
rounds      the round loop, top to bottom: cohort → send → aggregate → DP → step → evaluate
aggregate   the Aggregate every aggregation yields, the train report, the aggregator interface
plain       the plain aggregator: decode, validate, bound and sum each reply
secagg      the secure aggregator: SecAgg+'s server half
validation  every reply checked before anything aggregates it
robust      norm bounding of each update and each of its item rows
dp_fedavg   user-level DP-FedAvg on the aggregate, and the record-level ε tally
optimizer   the server step: FedAvg, FedAvgM, FedAdam, FedYogi; schedule, weight decay
evaluation  federated evaluation on a fixed panel
cohorts     who takes part: exact, fraction or Poisson samplers; the wait for nodes
recorder    each round's entry, kept and streamed to rounds.jsonl
checkpoint  the shared model, optimizer state and ε ledger after every round
resume      a run continued from its checkpoint, checked to be the same experiment
summary     what metrics.json says about the run
runs        run folders: file names and writers
plots       the quality and loss figures of a run folder
progress    a run as the commands show it: live view and results
errors      a run's setting errors as one line under Flower's runtime
grid        how a deployed server waits for a stage's replies: promptly, not for a lost one
echo        the null ServerApp: rounds of fedrec's shape, nothing computed
"""

__all__ = [
    "aggregate",
    "app",
    "checkpoint",
    "cohorts",
    "dp_fedavg",
    "echo",
    "errors",
    "evaluation",
    "grid",
    "optimizer",
    "plain",
    "plots",
    "progress",
    "recorder",
    "resume",
    "robust",
    "rounds",
    "runs",
    "secagg",
    "summary",
    "validation",
]
