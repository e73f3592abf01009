"""Copy a policy so that it never raises the LR for a run's last epoch (``no_final_raise``).

    python scripts/hold_final_raise.py --policy policies/default --out runs/hold/policy

The copy's network and normaliser are the policy's; only ``policy.json``'s ``no_final_raise`` is
set, so an LR raise the network asks for before a run's last epoch is played as a hold
(:class:`rlagent.policy.file.PolicyActor`). The final model is the one scored, and a raise for the
last epoch has no later epoch to be taken back in. ``--off`` writes the copy without it.
"""

from __future__ import annotations

import argparse
import json
import sys

from rlagent.errors import RLAgentError
from rlagent.policy.file import load_policy
from rlagent.policy.validate import policy_digest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", required=True, help="a policy directory")
    parser.add_argument("--out", required=True, help="the copy's policy directory")
    parser.add_argument("--off", action="store_true", help="write the copy without no_final_raise")
    args = parser.parse_args(argv)
    try:
        saved = load_policy(args.policy)
        saved.no_final_raise = not args.off
        record = {
            **saved.metadata.get("training", {}),
            "no_final_raise_set": {
                "on": saved.no_final_raise,
                "policy": args.policy,
                "json_sha256": policy_digest(args.policy),
            },
        }
        saved.save(args.out, metadata=record)
    except (RLAgentError, OSError) as exc:
        print(f"hold_final_raise: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(record["no_final_raise_set"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
