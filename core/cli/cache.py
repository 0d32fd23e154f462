"""List the data caches (decoded, resized splits) and the speed-probe cache, or clear them.

    segsweep cache list                         # the user cache and the caches of experiments/*.yaml
    segsweep cache list results/data/synthetic  # a data root, a cache folder or an experiment spec
    segsweep cache clear --older-than 30        # caches not used for 30 days
    segsweep cache clear --all

Caches live in data.cache_dir, beside the data (`<root>/.segsweep_cache/`) or in
$XDG_CACHE_HOME/segsweep (default ~/.cache/segsweep). The speed probes (`train.channels_last:
auto`, one per machine, model, size, batch and threads) are in speed_probes.json there; they are
listed and cleared with the user cache (no PATH given). A removed cache is rebuilt by the next run
that needs it. Exit codes: 0 done, 2 bad input.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..errors import SegsweepError

INTERMIXED = False


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", parser_class=type(parser))
    listing = actions.add_parser("list", help="each cache: path, dataset, split, size, disk use, last use; totals")
    clearing = actions.add_parser("clear", help="remove caches: --all, or those unused for --older-than DAYS")
    for sub in (listing, clearing):
        sub.add_argument("paths", nargs="*", metavar="PATH",
                         help="cache folder, data root or experiment spec (default: the user cache and "
                              "the caches of experiments/*.yaml)")
    clearing.add_argument("--all", action="store_true", help="remove every cache found")
    clearing.add_argument("--older-than", type=float, metavar="DAYS", help="remove caches last used DAYS ago or earlier")


def _folders(paths: list[str]) -> list[Path]:
    from ..data.caches import default_folders, resolve_folders

    if paths:
        return resolve_folders(paths)
    specs = sorted(Path("experiments").glob("*.yaml")) if Path("experiments").is_dir() else []
    folders = default_folders()
    for spec in specs:
        try:
            folders += resolve_folders([str(spec)])
        except SegsweepError:
            continue  # a broken spec has no cache to show; `segsweep run` says what is wrong
    return folders


def _line(entry, now: float) -> str:
    from ..data.caches import human_bytes

    used = time.strftime("%Y-%m-%d %H:%M", time.localtime(entry.last_used))
    what = f"{entry.images} images" if entry.complete and entry.images is not None else "incomplete (a stopped build)"
    return (f"{entry.directory / entry.key}  {entry.dataset} {entry.split} {entry.size}px  {what}  "
            f"{human_bytes(entry.bytes)}  last used {used} ({entry.age_days(now):.1f} days ago)")


def main(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from ..data.caches import find_caches, human_bytes, remove

    if args.action is None:
        parser.error("say what to do: list or clear")
    if args.action == "clear":
        if args.all == (args.older_than is not None):
            parser.error("clear takes exactly one of --all or --older-than DAYS")
        if args.older_than is not None and not args.older_than >= 0:
            parser.error(f"--older-than expects a number of days >= 0 (got {args.older_than})")
    folders = _folders(args.paths)
    entries = find_caches(folders)
    now = time.time()
    if args.action == "list":
        for entry in entries:
            print(_line(entry, now))
        where = ", ".join(str(f) for f in dict.fromkeys(folders) if f.is_dir())
        print(f"total: {len(entries)} cache(s), {human_bytes(sum(e.bytes for e in entries))} "
              + (f"(searched {where})" if where else "(no cache folder exists yet)"))
        if not args.paths:
            _list_probes(now)
        return 0
    chosen = entries if args.all else [e for e in entries if e.age_days(now) >= args.older_than]
    freed = 0
    for entry in chosen:
        size = remove(entry)
        freed += size
        print(f"removed {entry.directory / entry.key} ({entry.dataset} {entry.split} {entry.size}px, {human_bytes(size)})")
    kept = len(entries) - len(chosen)
    print(f"removed {len(chosen)} cache(s), freed {human_bytes(freed)}; {kept} kept")
    if not args.paths:
        from ..train.speed import cache_path, clear_probes

        try:
            removed = clear_probes(None if args.all else args.older_than)
        except OSError as exc:
            raise SegsweepError(f"{cache_path()}: cannot remove the speed probes ({exc.strerror or exc})") from None
        print(f"removed {removed} speed probe(s) from {cache_path()}")
    return 0


def _list_probes(now: float) -> None:
    from ..train.speed import cache_path, cached_probes

    probes = cached_probes()
    for key, entry in sorted(probes.items(), key=lambda kv: float(kv[1].get("measured", 0))):
        ratio, measured = entry.get("ratio"), float(entry.get("measured", 0))
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(measured)) if measured else "unknown"
        layout = "channels_last" if entry.get("channels_last") else "NCHW"
        speed = f"NCHW/channels_last step time {ratio:.3f}" if isinstance(ratio, (int, float)) else "no ratio"
        print(f"speed probe {key}: {layout} ({speed}), measured {when} ({(now - measured) / 86400:.1f} days ago)")
    print(f"total: {len(probes)} speed probe(s) in {cache_path()}")
