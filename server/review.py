"""`earwitness review`: an analyst's side of the server's database.

Candidates for review are line-ups the server would not vouch for as shots
(docs/protocol.md, topic ``candidate``); this lists them (``--shots``: the
located shots instead) and records a person's verdict on a candidate or a shot —
``confirmed``, ``false-alarm`` or ``unsure``, who and why — as a ``review``
record in the audit chain (the rows themselves are never changed; the latest
verdict is the current one). A shot is named by its id: ``"shot"`` in the
published JSON (not ``"incident"``, which several rounds share), or from
``list --shots``. Safe to run beside a live server: every write is one short
SQLite transaction, and the audit chain is extended under the database's write
lock.

    earwitness review list --db earwitness.sqlite [--shots] [--all] [--json]
    earwitness review candidate 7 confirmed --by alice --note "heard it on the snippets" --db ...
    earwitness review shot 57 false-alarm --by bob --note "fireworks at the park" --db ...
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from common.timefmt import ns_to_iso
from server.reports import CandidateReport, ShotReport
from server.store import VERDICTS, Review, Store, StoreError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="earwitness review",
                                description="List the candidates for review and record verdicts on candidates "
                                            "and shots (sealed into the audit chain).")
    sub = p.add_subparsers(dest="cmd", required=True)
    sp = sub.add_parser("list", help="the candidates not reviewed yet (--all: every one, with its verdict; "
                                     "--shots: the located shots instead)")
    sp.add_argument("--db", required=True, help="the server's SQLite database")
    sp.add_argument("--shots", action="store_true", help="list the located shots, not the candidates")
    sp.add_argument("--all", action="store_true", help="also those that have a verdict")
    sp.add_argument("--json", action="store_true", help="one JSON line per candidate (or shot)")
    ids = {"candidate": 'the candidate\'s id: "candidate" in the published JSON, or from `list`',
           "shot": 'the shot\'s id: "shot" in the published JSON (not "incident", which the rounds of a '
                   'burst share), or from `list --shots`'}
    for what in ("candidate", "shot"):
        sp = sub.add_parser(what, help=f"record a verdict on a {what}")
        sp.add_argument("id", type=int, help=ids[what])
        sp.add_argument("verdict", choices=VERDICTS)
        sp.add_argument("--by", required=True, metavar="NAME", help="who reviewed it")
        sp.add_argument("--note", default="", help="why (what was heard or seen)")
        sp.add_argument("--db", required=True, help="the server's SQLite database")
    return p


def _verdict_json(verdict: Review | None) -> dict | None:
    return None if verdict is None else {"verdict": verdict.verdict, "by": verdict.reviewer,
                                         "note": verdict.note, "t_utc": ns_to_iso(verdict.t_utc_ns)}


def candidate_json(c: CandidateReport, verdict: Review | None) -> dict:
    """A stored candidate as ``list --json`` prints it: the published fields
    (docs/protocol.md) and its current verdict (None: not reviewed)."""
    return {**c.to_json(), "verdict": _verdict_json(verdict)}


def shot_json(s: ShotReport, verdict: Review | None) -> dict:
    """A stored shot as ``list --shots --json`` prints it: the published fields
    (docs/protocol.md, with its id ``"shot"``) and its current verdict (None: not
    reviewed)."""
    return {**s.to_json(), "verdict": _verdict_json(verdict)}


def _show(rows: list, latest: dict[int, Review], id_of, to_json, head: str, line, noun: str,
          show_all: bool, as_json: bool) -> None:
    """Print ``rows`` (stored shots or candidates; ``id_of`` gives a row's id,
    ``latest`` the last verdict per id): one JSON line each (``to_json``), or a
    table (``head``, then ``line(row)`` and its verdict), then how many."""
    if as_json:
        for r in rows:
            print(json.dumps(to_json(r, latest.get(id_of(r)))))
        return
    print(f"{head}  verdict       nodes")
    for r in rows:
        v = latest.get(id_of(r))
        print(f"{line(r)}  {(v.verdict if v else '-'):<12}  {len(r.nodes)}: {', '.join(r.nodes)}")
    print(f"{len(rows)} {noun}(s){'' if show_all else ' not reviewed yet'}", file=sys.stderr)


def _list(st: Store, shots: bool, show_all: bool, as_json: bool) -> None:
    """``list`` (``--shots``): what has no verdict yet (everything with ``--all``)."""
    table = "shots" if shots else "candidates"
    latest = {r.ref_id: r for r in st.reviews(table)}             # oldest first: the last one wins
    if shots:
        rows = [x for x in st.shots() if show_all or x.shot_id not in latest]
        _show(rows, latest, lambda x: x.shot_id, shot_json,
              f"{'shot':>6} {'inc':>5} {'rnd':>3}  {'time (UTC)':<26} {'lat':>11} {'lon':>12} {'±95% m':>7}",
              lambda x: (f"{x.shot_id:>6} {x.incident:>5} {x.round:>3}  {ns_to_iso(x.t_utc_ns):<26} "
                         f"{x.lat:>11.6f} {x.lon:>12.6f} {x.error_m:>7.1f}"), "shot", show_all, as_json)
    else:
        rows = [x for x in st.candidates() if show_all or x.candidate_id not in latest]
        _show(rows, latest, lambda x: x.candidate_id, candidate_json,
              f"{'cand':>6} {'chance':>6}  {'time (UTC)':<26} {'lat':>11} {'lon':>12} {'±95% m':>7}",
              lambda x: (f"{x.candidate_id:>6} {x.chance:>6.2g}  {ns_to_iso(x.t_utc_ns):<26} {x.lat:>11.6f} "
                         f"{x.lon:>12.6f} {x.error_m:>7.1f}"), "candidate", show_all, as_json)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    if not Path(args.db).is_file():
        print(f"earwitness review: database {args.db} does not exist; give the server's [server] database",
              file=sys.stderr)
        return 2
    try:
        st = Store(args.db)
    except RuntimeError as exc:
        print(f"earwitness review: {exc}", file=sys.stderr)
        return 2
    try:
        if args.cmd == "list":
            _list(st, args.shots, args.all, args.json)
            return 0
        table = "candidates" if args.cmd == "candidate" else "shots"
        r = st.review(table, args.id, args.verdict, args.by, args.note)
        print(f"{args.cmd} {r.ref_id}: {r.verdict} by {r.reviewer} (audit record {r.audit_id})")
        return 0
    except (ValueError, StoreError) as exc:        # a bad id, a full or locked database
        print(f"earwitness review: {exc}", file=sys.stderr)
        return 2
    finally:
        st.close()
