"""The SLURM partition and account a run will submit to, checked once before any job is submitted.

A wrong account or partition makes ``sbatch`` refuse every job; Snakemake then retries, reports nothing for a group
job that was never submitted, and waits. Asking the cluster first (``sinfo``, ``sacctmgr``) turns that into one
message naming the profile key to change.
"""

from __future__ import annotations

import getpass
import os
import subprocess
from dataclasses import dataclass
from typing import Mapping


@dataclass(frozen=True)
class SiteValue:
    """A partition or account as the profile gives it, and the profile key that gives it."""

    value: str
    key: str


def _run(command: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=30)


def profile_values(*, default_resources: Mapping[str, object],
                   rule_resources: Mapping[str, Mapping[str, object]]) -> tuple[list[SiteValue], list[SiteValue]]:
    """(partitions, accounts) from the profile's ``default-resources`` and ``set-resources``, each with its key."""
    partitions, accounts = [], []
    for scope, resources in [("default-resources", default_resources),
                             *((f"set-resources: {rule}", values) for rule, values in rule_resources.items())]:
        for name, found in (("slurm_partition", partitions), ("slurm_account", accounts)):
            value = resources.get(name)
            if value not in (None, ""):
                found.append(SiteValue(str(value).strip("'\""), f"{scope}: {name}"))
    return partitions, accounts


def site_problems(*, partitions: list[SiteValue], accounts: list[SiteValue], user: str | None = None) -> list[str]:
    """What is wrong with the partitions and accounts on this cluster, one line each (empty: nothing)."""
    problems: list[str] = []
    try:
        listed = _run(["sinfo", "--noheader", "--format=%R"])
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [f"sinfo did not answer ({type(exc).__name__}: {exc}): is this a SLURM login node?"]
    if listed.returncode != 0:
        return [f"sinfo could not reach the SLURM controller: {listed.stderr.strip()[:300]}"]
    available = {line.strip() for line in listed.stdout.splitlines() if line.strip()}
    for partition in partitions:
        if partition.value not in available:
            problems.append(f"partition {partition.value!r} (profile key {partition.key}) is not on this cluster; "
                            f"it has: {', '.join(sorted(available)) or 'none'} (sinfo -s)")
    if accounts:
        user = user or os.environ.get("USER") or getpass.getuser()
        try:
            assoc = _run(["sacctmgr", "--noheader", "--parsable2", "show", "associations", f"user={user}",
                         "format=account"])
        except (OSError, subprocess.TimeoutExpired):
            assoc = None
        if assoc is not None and assoc.returncode == 0:
            mine = {line.strip() for line in assoc.stdout.splitlines() if line.strip()}
            for account in accounts:
                if account.value not in mine:
                    problems.append(f"account {account.value!r} (profile key {account.key}) is not one of {user}'s "
                                    f"accounts: {', '.join(sorted(mine)) or 'none'} (sacctmgr show associations user={user})")
    return problems
