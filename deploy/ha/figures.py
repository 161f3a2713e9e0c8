"""The figures of `deploy/ha/run --check`, from the simulator's own records.

Reads requests.json (/_sim/requests: every API request with its client IP and time),
actions.json (/_sim/actions: every power action) and vms.json (/_sim/vms: owners and
payments) from --dir, prints one JSON line and exits 1 when a guarantee failed:

- max_owners_per_account: after the cluster settled, for each account, the most client
  IPs whose spans of requests about the account's VMs (first to last) overlap at one
  moment: from settling to the quorum loss, and from settling again after it to the end
  (while the replicas re-register after the loss an account may go from a to b and back
  to a within a second, each hand-over clean; what is measured there is the writes). A clean handover (the old owner's last request before the new one's first)
  counts 1; two replicas polling an account at once count 2.
- failover_seconds: from the kill of the owner to the first request by another replica
  about a VM of an account the killed replica had polled.
- duplicate_actions: power actions on a VM beyond its first (every rule in the run has a
  one-hour cooldown, so a second one is a duplicate).
- duplicate_payments: paid invoices of a VM beyond its first, since the run started.
- actions_during_quorum_loss: provider writes (any request but GET) while two of the
  three etcd members were stopped, from the moment the VM went down until its owner
  showed it was blocked (quorum_loss_evidence: "fence refused", the watchdog's action
  failed at the etcd fence; or "lease lost", the owner gave its accounts up).
- actions, payments: how many the run saw (positive evidence that both ran).
"""

import argparse
import json
import os
import sys
from collections import defaultdict
from datetime import datetime, timezone


def seconds(stamp):
    """RFC 3339 (nanoseconds allowed) -> Unix seconds."""
    stamp = stamp.replace("Z", "+00:00")
    main, _, rest = stamp.partition(".")
    frac = ""
    tz = ""
    if rest:
        digits = 0
        while digits < len(rest) and rest[digits].isdigit():
            digits += 1
        frac, tz = rest[:digits], rest[digits:]
    else:
        main, tz = stamp[:19], stamp[19:]
    t = datetime.fromisoformat(main + (tz or "+00:00")).astimezone(timezone.utc)
    return t.timestamp() + (float("0." + frac) if frac else 0.0)


def load(directory, name):
    with open(os.path.join(directory, name), encoding="utf-8") as f:
        return json.load(f)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dir", required=True)
    p.add_argument("--accounts", type=int, required=True)
    p.add_argument("--started", type=float, required=True)
    p.add_argument("--settled", type=float, required=True)
    p.add_argument("--killed", type=float, required=True)
    p.add_argument("--killed-ip", required=True)
    p.add_argument("--loss", type=float, nargs=2, required=True)
    p.add_argument("--resettled", type=float, required=True)
    p.add_argument("--loss-evidence", default="")
    a = p.parse_args()

    requests = load(a.dir, "requests.json")
    actions = load(a.dir, "actions.json")
    vms = load(a.dir, "vms.json")

    # Account index of each VM: owners in the order the scenario lists their VMs.
    owners = []
    account_of = {}
    for vm in sorted(vms, key=lambda v: v["id"]):
        if vm["owner"] not in owners:
            owners.append(vm["owner"])
        account_of[vm["id"]] = owners.index(vm["owner"])

    # (account, phase) -> ip -> [first, last]. Phase 0 runs from settling to the quorum
    # loss, phase 1 from settling again after it. In between, replicas that lost their
    # leases re-register one by one, and an account may pass from a to b and back to a
    # within a second: each hand-over clean, but the spans would overlap.
    spans = defaultdict(dict)
    killed_accounts = set()
    failover = None
    for r in requests:
        vm = r.get("vm_id")
        if vm is None or vm not in account_of:
            continue
        t = seconds(r["at"])
        if t < a.settled or a.loss[0] <= t < a.resettled:
            continue
        acc = account_of[vm]
        phase = 0 if t < a.loss[0] else 1
        span = spans[(acc, phase)].setdefault(r["client_ip"], [t, t])
        span[0] = min(span[0], t)
        span[1] = max(span[1], t)
        if r["client_ip"] == a.killed_ip and t <= a.killed:
            killed_accounts.add(acc)
    for r in requests:
        vm = r.get("vm_id")
        if vm is None or account_of.get(vm) not in killed_accounts:
            continue
        t = seconds(r["at"])
        if t > a.killed and r["client_ip"] != a.killed_ip:
            failover = t - a.killed if failover is None else min(failover, t - a.killed)

    max_owners = 0
    for by_ip in spans.values():
        edges = sorted(
            [(s, 1) for s, _ in by_ip.values()] + [(e, -1) for _, e in by_ip.values()],
            key=lambda x: (x[0], -x[1]),
        )
        n = 0
        for _, d in edges:
            n += d
            max_owners = max(max_owners, n)

    per_vm = defaultdict(int)
    for act in actions:
        per_vm[act["vm_id"]] += 1
    duplicate_actions = sum(n - 1 for n in per_vm.values() if n > 1)

    duplicate_payments = 0
    payments = 0
    for vm in vms:
        paid = [
            x
            for x in vm["payments"]
            if x["is_paid"] and x.get("paid_at") and seconds(x["paid_at"]) >= a.started
        ]
        payments += len(paid)
        duplicate_payments += max(0, len(paid) - 1)

    lo, hi = a.loss
    during_loss = sum(
        1
        for r in requests
        if r["method"] != "GET"
        and r.get("endpoint", "").startswith("/api/")
        and lo <= seconds(r["at"]) <= hi
    )

    polled = len({acc for acc, _ in spans})
    out = {
        "accounts": polled,
        "max_owners_per_account": max_owners,
        "failover_seconds": None if failover is None else round(failover, 2),
        "duplicate_actions": duplicate_actions,
        "duplicate_payments": duplicate_payments,
        "actions_during_quorum_loss": during_loss,
        "actions": len(actions),
        "payments": payments,
        "quorum_loss_evidence": a.loss_evidence,
    }
    print(json.dumps(out, separators=(",", ":")))
    problems = []
    if polled != a.accounts:
        problems.append(f"{polled} of {a.accounts} accounts were polled after settling")
    if max_owners != 1:
        problems.append(f"an account had {max_owners} owners at once")
    if failover is None:
        problems.append("no replica took over the killed replica's accounts")
    if duplicate_actions:
        problems.append(f"{duplicate_actions} duplicate power actions")
    if duplicate_payments:
        problems.append(f"{duplicate_payments} duplicate payments")
    if during_loss:
        problems.append(f"{during_loss} provider writes while etcd had no quorum")
    for problem in problems:
        print(f"deploy/ha/run: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
