"""`python -m bench.run alias`: what an alias costs over an awake first target (docs/protocol.md,
Aliases; issue 25): the hub's CPU time per request for the alias against a direct request
to the same Llm, in one hub process, in alternated rounds (a shared machine's drift falls on
both arms alike). The target: within 5 % of a direct request."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from bench.client import relay_n
from bench.cpu import cpu_of
from bench.results import save, table
from bench.stack import Stack

ALIAS = "demo-alias"
BOUND = 1.05


def _measure(env: dict[str, str], requests_n: int, concurrency: int,
             rounds: int) -> dict[str, float]:
    """The hub worker's CPU seconds for each arm, summed over the rounds."""
    with Stack(hub_env=env) as stack:
        hub = {"hub": stack.hub_worker_pid()}
        for model in ("demo", ALIAS):  # warm up both paths
            relay_n(stack.hub, 200, concurrency, model=model)
        spent = {"direct": 0.0, "alias": 0.0}
        for _ in range(rounds):
            for arm, model in (("direct", "demo"), ("alias", ALIAS)):
                used, _ = cpu_of(hub, lambda model=model: relay_n(stack.hub, requests_n,
                                                                  concurrency, model=model))
                spent[arm] += used["hub"]
    return spent


def bench_alias(requests_n: int = 2400, concurrency: int = 16, rounds: int = 4) -> dict[str, Any]:
    out: dict[str, Any] = {"requests_per_round": requests_n, "concurrency": concurrency,
                           "rounds": rounds}
    with tempfile.TemporaryDirectory(prefix="tether-bench-alias-") as tmp:
        config = Path(tmp) / "alias.toml"
        # A second target that is never reached: the first is awake, the alias's common case.
        config.write_text(f'[[aliases]]\nname = "{ALIAS}"\ntargets = ["demo", "elsewhere"]\n')
        spent = _measure({"TETHER_CONFIG": str(config)}, requests_n, concurrency, rounds)
    total = requests_n * rounds
    out["hub_per_request_us"] = {arm: round(v / total * 1e6, 1) for arm, v in spent.items()}
    out["alias_ratio"] = round(spent["alias"] / spent["direct"], 3)
    table(f"hub CPU per request, an alias over an awake first target against a direct "
          f"request ({rounds} alternated rounds of {requests_n} at concurrency "
          f"{concurrency}), µs", ["direct", "alias", "alias ÷ direct", "bound", "verdict"],
          [[out["hub_per_request_us"]["direct"], out["hub_per_request_us"]["alias"],
            out["alias_ratio"], f"≤ {BOUND}",
            "met" if out["alias_ratio"] <= BOUND else "not met"]])
    save("alias", out)
    return out
