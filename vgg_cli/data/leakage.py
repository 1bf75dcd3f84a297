"""What duplicate groups (``duplicates``) mean for a dataset index: one side of the split per group, label
conflicts, and leaked validation images.

- **One side per group.** Split assignments of earlier runs stay (sticky); a new image that duplicates an earlier
  one goes to its side (to training when earlier copies are on both sides); a group of new images goes to the side
  the stable hash gives its first member, so copies never straddle the split by chance.
- **Label conflicts.** A group whose copies are in several class folders: always reported; ``data.duplicates``
  says whether they train (``keep``, as labelled) or every copy is left out of training and validation (``drop``).
- **Leaked.** A validation image with a copy in training (earlier assignments, or a separate ``data.val_dir``):
  the model may have learnt it, so it is left out of the accuracy that decides promotion
  (``DatasetIndex.judged_split``) and counted in the report.

The record (``data.json`` "duplicates") names files as the manifest does, a ``val_dir:`` prefix for ``data.val_dir``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from vgg_cli.data.duplicates import groups_of, near_pairs

log = logging.getLogger("vgg")
TRAIN, VAL = "train", "val"
MAX_LISTED = 1000  # groups listed in the record (all are counted)


@dataclass(frozen=True)
class Item:
    source: str  # train_dir | val_dir
    path: str
    label: int
    sha1: str
    print: tuple[str, str]

    @property
    def shown(self) -> str:
        return f"{'val_dir:' if self.source == 'val_dir' else ''}{self.path}"


def find_groups(items: list[Item]) -> tuple[list[list[int]], set[tuple[int, int]]]:
    """Duplicate groups (indices into ``items``) and the exact pairs among them."""
    pairs = near_pairs([it.print for it in items], [it.sha1 for it in items])
    return groups_of(len(items), pairs), {(i, j) for i, j, kind in pairs if kind == "exact"}


def one_side(groups: list[list[int]], items: list[Item], splits: dict[str, str], previous: dict[str, str],
             split_value) -> None:
    """Put every new member of a group (of ``data.train_dir`` images) on the group's side, in ``splits``."""
    for group in groups:
        members = [items[i] for i in group if items[i].source == "train_dir"]
        new = [it for it in members if it.path not in previous]
        if not new:
            continue
        old = {previous[it.path] for it in members if it.path in previous}
        if old:
            side = TRAIN if TRAIN in old else VAL
        else:
            side = splits[min((it.path for it in members), key=split_value)]
        for it in new:
            splits[it.path] = side


def record(groups: list[list[int]], exact: set[tuple[int, int]], items: list[Item], split_of, classes: list[str],
           policy: str) -> dict:
    """The duplicates record: groups, label conflicts, leaked validation images, files dropped (``drop``)."""
    listed, leaked, dropped, conflicts, straddle = [], [], [], 0, 0
    for group in groups:
        members = [items[i] for i in group]
        labels = {it.label for it in members}
        conflict = len(labels) > 1
        splits = [split_of(it) for it in members]
        all_exact = all((a, b) in exact for x, a in enumerate(group) for b in group[x + 1:])
        conflicts += conflict
        if conflict and policy == "drop":
            dropped += [it.shown for it in members]
        else:
            if TRAIN in splits and VAL in splits:
                straddle += 1
                leaked += [it.shown for it, s in zip(members, splits) if s == VAL]
        if len(listed) < MAX_LISTED:
            listed.append({"kind": "exact" if all_exact else "near", "conflict": conflict,
                           "files": [it.shown for it in members], "classes": sorted(classes[i] for i in labels),
                           "splits": splits})
    return {"policy": policy, "groups_total": len(groups), "images_in_groups": sum(map(len, groups)),
            "label_conflicts": conflicts, "across_splits": straddle, "leaked": sorted(leaked),
            "dropped": sorted(dropped), "groups": listed}


def log_record(rec: dict) -> None:
    """The scan's log lines about duplicates: label conflicts and leaked validation images (warnings)."""
    if rec["label_conflicts"]:
        how = ("every copy left out of training and validation (data.duplicates=drop)" if rec["policy"] == "drop"
               else "trained as labelled (data.duplicates=keep; drop leaves them out)")
        examples = [", ".join(g["files"][:3]) for g in rec["groups"] if g["conflict"]][:3]
        log.warning("label conflicts: %d image(s) are in more than one class folder (same picture): %s; e.g. %s",
                    rec["label_conflicts"], how, "; ".join(examples))
    if rec["leaked"]:
        log.warning("leaked: %d validation image(s) have a copy in training (%s%s): left out of the accuracy "
                    "that decides promotion", len(rec["leaked"]), ", ".join(rec["leaked"][:3]),
                    ", ..." if len(rec["leaked"]) > 3 else "")
    if rec["groups_total"]:
        log.info("duplicates: %d group(s) of the same picture, %d images (listed in data.json)",
                 rec["groups_total"], rec["images_in_groups"])
