"""`attrilens bench context`: every method against exact target LOO on held-out reading episodes of the world.

First the target answers held-out episodes greedily (timed; the response is cut after its first sentence), which
counts how many it answers; then, on the answered ones, naive exact LOO gives the ground truth and every setting
is scored for faithfulness (outlier mAP, Spearman, top-k log-prob drop, gold hit@1, how often a pruned context
stops supporting the response) and cost (forward passes, tokens, tokens × non-embedding parameters, wall time),
each cost as a ratio to naive LOO in the same run. Peers (captum's FeatureAblation, the context-cite package) are
rows of the same run when installed; several proxies (e.g. early-exit:K at several K) give one set of rows each.

`settings` (the rows), `episodes` (loading and screening), `evaluate` (one episode under every setting), `tables`
(summary and tables) and `run` (`run_benchmark`); the names are re-exported here.
"""

from attrilens.bench.context.episodes import first_sentence, is_correct, load_episodes, respond, screen
from attrilens.bench.context.evaluate import as_proxies, evaluate_episode, run_peer
from attrilens.bench.context.run import run_benchmark
from attrilens.bench.context.settings import CACHED, NAIVE, PEERS, Setting, default_settings, proxy_settings
from attrilens.bench.context.tables import (
    agreement_table,
    budget_table,
    format_table,
    settings_table,
    summarise,
)

__all__ = [
    "CACHED", "NAIVE", "PEERS", "Setting", "agreement_table", "as_proxies", "budget_table",
    "default_settings", "evaluate_episode", "first_sentence", "format_table", "is_correct", "load_episodes",
    "proxy_settings", "respond", "run_benchmark", "run_peer", "screen", "settings_table", "summarise",
]
