"""Choose a policy among candidates on validation draws, then confirm the choice on fresh draws.

Checkpoints of one PPO run a few thousand steps apart score several points apart on the same
validation draws (policies/auc/README.md), so "which checkpoint, which run" is a choice to
make on data, not the step where a time limit stopped training. But the best of many candidates
on the draws it was picked on is flattered by that pick (the winner's curse): its score there is
partly noise that happened to favour it. So the choice is made in two stages on disjoint draws of
the training distribution (:func:`rlagent.policy.validate.validation_seeds`), never on the
held-out suite:

1. **choose** — every candidate and the incumbent run validation draws ``select_from ..
   select_from + n_select - 1`` (from draw 0 by default) from each start; the one with the best
   mean final validation accuracy over the starts is chosen (the incumbent on a tie). A start may
   name its own spec (``{"spec": ...}``), so a policy trained on a mix of distributions (e.g.
   plain draws and probe-blind hot ones) is judged on each part;
2. **confirm** — if a candidate was chosen, it and the incumbent run the next ``n_confirm``
   draws (or from a later draw, ``confirm_from``: past draws already looked at), which played no
   part in the choice; it replaces the incumbent only if it is ahead there from every start
   (paired by draw). A start where the two end every draw
   at exactly the same accuracy (a candidate that acts as the incumbent there, e.g. one that only
   adds a rollback the runs from that start never ask for) is no evidence either way: it is
   skipped, and at least one start must remain.

The confirmation is four times the choice (96 draws against 24): from a far too high start a
draw's outcome is nearly all-or-nothing (a run recovers to ~0.5 or stays at chance), so a couple
of draws move a 24-draw mean by 2-3 points, as much as any change to the recipe has; 96 draws
halve the paired standard error, at about 6 minutes per start and policy on 2 cores.

The curse also flatters an incumbent on the draws it was itself chosen on: scored there against
it, every later candidate starts behind by the noise that picked it. ``select_from`` moves the
choice to draws the incumbent was never chosen on.
"""

from __future__ import annotations

import logging
import math
import re
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlagent.config import EnvSpec, load_spec
from rlagent.errors import SpecError, is_int
from rlagent.policy._integrity import read_json
from rlagent.policy.controller import trained_start
from rlagent.policy.file import JSON_NAME
from rlagent.policy.validate import ValidationReport, policy_digest, start_suffix, validate_policy

logger = logging.getLogger(__name__)

INCUMBENT = "incumbent"
"""The name the incumbent policy goes by in a :class:`Selection`."""

DEFAULT_STARTS: tuple[dict[str, Any] | None, ...] = (
    None,
    {"lr": 0.1, "batch_size": 16},
    {"lr": 1e-4, "batch_size": 512},
)
"""The draws' own random starts, a far too high LR at a small batch, a far too low LR at a large one."""

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def split_start(start: Mapping[str, Any] | None) -> tuple[str | Path | None, dict[str, Any] | None]:
    """``{"spec": S, **rest}`` -> ``(S, rest or None)``; a start without ``"spec"`` -> ``(None, start)``.

    Raises:
        SpecError: Naming ``start.spec``, if it is not a spec name or path.
    """
    if not start or "spec" not in start:
        return None, dict(start) if start else None
    rest = {k: v for k, v in start.items() if k != "spec"}
    if not isinstance(start["spec"], (str, Path)) or not str(start["spec"]):
        raise SpecError("start.spec", start["spec"], "a spec name or path")
    return start["spec"], rest or None


def _spec_name(spec: str | Path) -> str:
    """A spec's short name for labels and file names: a shipped name as it is, a path's stem."""
    return Path(spec).stem if str(spec).endswith(".toml") else str(spec)


def start_as_run(policy: str | Path, start: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """The start ``policy`` runs from: a policy trained from LR-probe starts (``episode.init_lr =
    "probe"`` in its ``policy.json``) runs the draws' own starts (``None``) from the probe at each
    draw's batch size, as :func:`rlagent.policy.reuse.run_policy` does when given no LR. A start
    that gives an LR is kept for every policy: the far-off starts test whether a policy corrects a
    bad LR it is handed (issue 11's robustness target), which a probe would hide. Read from
    ``policy.json`` alone, as the report digests are."""
    spec, rest = split_start(start)
    if rest is None and trained_start(read_json(Path(policy) / JSON_NAME)) == "probe":
        rest = {"lr": "probe"}
    return rest if spec is None else {**(rest or {}), "spec": spec}


def start_label(start: Mapping[str, Any] | None) -> str:
    """``None`` -> ``"own start"``; ``{"lr": 0.1, "batch_size": 16}`` -> ``"LR 0.1 / batch 16"``;
    ``", checked"`` added for ``start_check``, ``" on SPEC"`` for a start with its own spec."""
    spec, start = split_start(start)
    where = "" if spec is None else f" on {_spec_name(spec)}"
    if not start:
        return "own start" + where
    lr = start.get("lr")
    parts = [] if lr is None else [f"LR {lr}" if isinstance(lr, str) else f"LR {lr:g}"]
    label = " / ".join(parts + ([f"batch {start['batch_size']}"] if "batch_size" in start else []))
    return label + (", checked" if start.get("start_check") else "") + where


@dataclass(frozen=True)
class Paired:
    """The chosen candidate against the incumbent on the confirmation draws, from one start."""

    start: str
    candidate: float
    """Mean final validation accuracy of the candidate."""
    incumbent: float
    difference: float
    """Mean over draws of (candidate − incumbent)."""
    stderr: float
    """Standard error of that mean (0 with a single draw)."""
    wins: int
    """Draws where the candidate ends above the incumbent."""
    draws: int
    same: int = 0
    """Draws where the two end at exactly the same accuracy."""

    @property
    def identical(self) -> bool:
        """Whether the two ended every draw alike (no evidence either way)."""
        return self.same == self.draws


@dataclass(frozen=True)
class Selection:
    """What :func:`select_policy` measured and decided."""

    starts: tuple[str, ...]
    scores: dict[str, tuple[float, ...]]
    """Per policy (the incumbent included), its mean final validation accuracy on the selection
    draws from each start, in the order of ``starts``."""
    chosen: str
    confirmation: tuple[Paired, ...]
    """Empty when the incumbent itself was chosen."""
    n_select: int
    n_confirm: int
    reversals: Mapping[str, float] = field(default_factory=dict)
    """Per policy, the share of its LR moves on the selection draws (all starts) that its next
    move reversed (:func:`rlagent.policy.validate.lr_reversals`): how much it dithers."""
    confirm_from: int | None = None
    """The first confirmation draw; None: the one after the selection draws."""
    select_from: int = 0
    """The first selection draw."""

    @property
    def first_confirm(self) -> int:
        """The first confirmation draw."""
        return self.select_from + self.n_select if self.confirm_from is None else self.confirm_from

    @property
    def select_draws(self) -> str:
        """The selection draws, as ``FIRST-LAST``."""
        return f"{self.select_from}-{self.select_from + self.n_select - 1}"

    @property
    def replace(self) -> bool:
        """Whether the chosen candidate is ahead of the incumbent on fresh draws from every start
        where the two differ (and there is one)."""
        differ = [p for p in self.confirmation if not p.identical]
        return bool(differ) and all(p.difference > 0 for p in differ)

    def score(self, name: str) -> float:
        """A policy's selection score: its mean over the starts."""
        return statistics.fmean(self.scores[name])

    def verdict(self) -> str:
        """One line: what was chosen and whether it replaces the incumbent."""
        if self.chosen == INCUMBENT:
            return f"keep the incumbent: no candidate scored above it on draws {self.select_draws}"
        behind = [p.start for p in self.confirmation if p.difference <= 0 and not p.identical]
        alike = [p.start for p in self.confirmation if p.identical]
        if self.replace:
            skipped = f" (alike from {', '.join(alike)})" if alike else ""
            return f"replace the incumbent with {self.chosen}: ahead from every start on fresh draws{skipped}"
        if not behind:
            return f"keep the incumbent: {self.chosen} ends every fresh draw alike from every start"
        return f"keep the incumbent: {self.chosen} was chosen but is not ahead on fresh draws from {', '.join(behind)}"

    def to_markdown(self) -> str:
        """The choice and the confirmation as two markdown tables and the verdict."""
        head = " | ".join(self.starts)
        lines = [
            f"Chosen on validation draws {self.select_draws} (mean final validation accuracy):",
            "",
            f"| policy | {head} | mean |" + (" LR moves reversed |" if self.reversals else ""),
            "|---|" + "---:|" * (len(self.starts) + 1 + bool(self.reversals)),
        ]
        for name in sorted(self.scores, key=self.score, reverse=True):
            mark = "**" if name == self.chosen else ""
            cells = " | ".join(f"{v:.4f}" for v in self.scores[name])
            share = f" {self.reversals[name]:.0%} |" if name in self.reversals else (" |" if self.reversals else "")
            lines.append(f"| {mark}{name}{mark} | {cells} | {mark}{self.score(name):.4f}{mark} |{share}")
        if self.confirmation:
            last = self.first_confirm + self.n_confirm - 1
            lines += [
                "",
                f"Confirmed on the fresh draws {self.first_confirm}-{last}, paired by draw:",
                "",
                f"| start | {self.chosen} | incumbent | difference ± s.e. | draws won |",
                "|---|---:|---:|---:|---:|",
            ]
            for p in self.confirmation:
                lines.append(
                    f"| {p.start} | {p.candidate:.4f} | {p.incumbent:.4f} | {p.difference:+.4f} ± {p.stderr:.4f} "
                    f"| {p.wins} of {p.draws} |"
                )
        lines += ["", f"Verdict: {self.verdict()}."]
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict[str, Any]:
        return {
            "starts": list(self.starts),
            "select_from": self.select_from,
            "n_select": self.n_select,
            "n_confirm": self.n_confirm,
            "confirm_from": self.first_confirm,
            "scores": {k: list(v) for k, v in self.scores.items()},
            "chosen": self.chosen,
            "confirmation": [vars(p) for p in self.confirmation],
            "reversals": dict(self.reversals),
            "replace": self.replace,
            "verdict": self.verdict(),
        }


def paired(start: str, candidate: ValidationReport, incumbent: ValidationReport, *, key: str = "val_acc") -> Paired:
    """Pair two reports on the same draws (same seeds, same order) by a :class:`DrawResult` score:
    ``val_acc`` (the policy's), or ``constant_val_acc`` (its start held constant)."""
    if [d.seed for d in candidate.draws] != [d.seed for d in incumbent.draws]:
        raise ValueError("the two reports are not on the same draws")
    if key not in ("val_acc", "constant_val_acc"):
        raise SpecError("key", key, "'val_acc' or 'constant_val_acc'")
    ours, theirs = [getattr(d, key) for d in candidate.draws], [getattr(d, key) for d in incumbent.draws]
    diffs = [c - i for c, i in zip(ours, theirs, strict=True)]
    stderr = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else 0.0
    return Paired(
        start=start,
        candidate=statistics.fmean(ours),
        incumbent=statistics.fmean(theirs),
        difference=statistics.fmean(diffs),
        stderr=stderr,
        wins=sum(d > 0 for d in diffs),
        draws=len(diffs),
        same=sum(d == 0 for d in diffs),
    )


def select_policy(
    candidates: Mapping[str, str | Path],
    incumbent: str | Path,
    spec: EnvSpec | str | Path = "default",
    *,
    starts: Sequence[Mapping[str, Any] | None] = DEFAULT_STARTS,
    n_select: int = 24,
    n_confirm: int = 96,
    confirm_from: int | None = None,
    select_from: int = 0,
    n_workers: int = 1,
    store: str | Path | None = None,
) -> Selection:
    """Choose among ``candidates`` on validation draws and confirm the choice against the incumbent.

    Args:
        candidates: Policy directories by name (letters, digits, ``.``, ``_``, ``-``; not
            ``"incumbent"``), e.g. the checkpoints of one or more training runs.
        incumbent: The policy in use (e.g. the shipped one); kept unless beaten on fresh draws.
        spec: The spec the policies were trained on; its sampler gives the draws.
        starts: Where every draw starts: ``None`` for the draw's own random start, else
            ``{"lr": ..., "batch_size": ...}`` as in :func:`validate_policy`. A policy trained
            from LR-probe starts runs the draws' own starts from the probe, and the given ones as
            given (:func:`start_as_run`). ``"spec"`` in a start draws its draws from that spec
            instead of ``spec`` (``{"spec": "default-hot-final"}``: its own starts there).
        n_select: Draws the choice is made on (draws ``select_from .. select_from + n_select - 1``).
        n_confirm: Fresh draws the chosen policy must win on (the next ``n_confirm``; see above).
        confirm_from: The first of them; None: the one after the selection draws. A later one
            skips draws already looked at, e.g. an earlier selection's confirmation; an earlier
            one must end before the selection draws.
        select_from: The first selection draw: past the draws the incumbent was chosen on, so
            that its score there is not flattered by its own choice (see above).
        n_workers: Processes running draws side by side.
        store: A folder for every report (``NAME/DIGEST__draws-FIRST-LAST[__start-LR-BS][__spec-SPEC].json``,
            DIGEST from the policy's ``policy.json``); reports there that still stand are read
            back instead of run again, so candidates can be added to a selection later at the
            cost of the new ones only.

    Returns:
        The scores, the choice, the confirmation and (``.replace``) whether to replace.

    Raises:
        SpecError: Naming the argument, for no candidates, a bad name, no starts, draw counts
            below 1, or confirmation draws that overlap the selection draws.
    """
    if not candidates:
        raise SpecError("candidates", {}, "at least one candidate policy")
    for name in candidates:
        if not isinstance(name, str) or not _NAME.fullmatch(name) or name == INCUMBENT:
            raise SpecError("candidate name", name, f"letters, digits, '.', '_', '-', not {INCUMBENT!r}")
    for what, n in (("n_select", n_select), ("n_confirm", n_confirm)):
        if not is_int(n) or n < 1:
            raise SpecError(what, n, "an integer >= 1")
    if not is_int(select_from) or select_from < 0:
        raise SpecError("select_from", select_from, "an integer >= 0")
    end = select_from + n_select  # one past the last selection draw
    first = end if confirm_from is None else confirm_from
    if not is_int(first) or first < 0 or select_from - n_confirm < first < end:
        before = f" or <= {select_from - n_confirm} (ending before them)" if select_from >= n_confirm else ""
        after = f"an integer >= {end} (after the selection draws {select_from}-{end - 1})"
        raise SpecError("confirm_from", confirm_from, after + before)
    if not starts:
        raise SpecError("starts", list(starts), "at least one start (None for the draws' own)")
    spec = spec if isinstance(spec, EnvSpec) else load_spec(spec)
    own_specs = {split_start(s)[0] for s in starts} - {None}
    specs = {name: load_spec(name) for name in own_specs}  # a bad spec fails here, before any draw
    folder = Path(store) if store is not None else None

    def report(name: str, policy: str | Path, start: Mapping[str, Any] | None, first: int, n: int) -> ValidationReport:
        own_spec, start = split_start(start_as_run(policy, start))
        where = None
        if folder is not None:
            (folder / name).mkdir(parents=True, exist_ok=True)
            # the policy's own digest in the file name: a name given to another policy later
            # does not read back the first one's reports. Read from policy.json alone, so an
            # incumbent of a format this rlagent no longer loads is judged by its stored reports
            # (made by the rlagent that reads it); without them validating it fails, saying why.
            digest = policy_digest(policy)[:12]
            on = "" if own_spec is None else f"__spec-{_spec_name(own_spec)}"
            where = folder / name / f"{digest}__draws-{first}-{first + n - 1}{start_suffix(start)}{on}.json"
        result = validate_policy(
            policy, spec if own_spec is None else specs[own_spec], n_draws=n, first_draw=first, n_workers=n_workers,
            start=start, store=where,
        )  # fmt: skip
        label = start_label(start if own_spec is None else {**(start or {}), "spec": own_spec})
        logger.info("%s from %s, draws %d-%d: %.4f", name, label, first, first + n - 1, result.mean_val_acc)
        return result

    policies = {INCUMBENT: incumbent, **candidates}
    labels = tuple(start_label(s) for s in starts)
    reports = {name: [report(name, path, s, select_from, n_select) for s in starts] for name, path in policies.items()}
    scores = {name: tuple(r.mean_val_acc for r in rs) for name, rs in reports.items()}
    # one share over every start's draws, by the report's own rule
    reversals = {
        name: ValidationReport([d for r in rs for d in r.draws]).reversal_share for name, rs in reports.items()
    }
    best = max(scores, key=lambda n: (statistics.fmean(scores[n]), n == INCUMBENT))
    confirmation: tuple[Paired, ...] = ()
    if best != INCUMBENT:
        confirmation = tuple(
            paired(
                label,
                report(best, policies[best], s, first, n_confirm),
                report(INCUMBENT, incumbent, s, first, n_confirm),
            )
            for label, s in zip(labels, starts, strict=True)
        )
    return Selection(labels, scores, best, confirmation, n_select, n_confirm, reversals, confirm_from, select_from)
