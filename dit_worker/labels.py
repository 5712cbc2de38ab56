"""Class names from a checkpoint's id2label ("great white shark, white shark, man-eater, ...")."""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence


class ClassNames:
    """Class ids and their names (a model's `id2label`): ids by name, names by id.

    A label "tiger shark, Galeocerdo cuvieri" answers to the whole text and to each comma-separated
    part, case-insensitively. Usage::

        names = ClassNames({3: "tiger shark, Galeocerdo cuvieri"}, num_classes=1000)
        names.ids("Tiger Shark")  # [3]
    """

    def __init__(self, id2label: Mapping[int, str], num_classes: int) -> None:
        self.labels = dict(sorted(id2label.items()))
        self.num_classes = num_classes
        self._ids: dict[str, list[int]] = {}
        for class_id, label in self.labels.items():
            for name in {label.strip().lower(), *(s.strip().lower() for s in label.split(","))}:
                if name and class_id not in self._ids.setdefault(name, []):
                    self._ids[name].append(class_id)

    def name(self, class_id: int) -> str:
        """The first synonym, or "" when the checkpoint has no names."""
        return self.labels.get(class_id, "").split(",")[0].strip()

    def candidates(self, name: str) -> list[int]:
        """Every class id `name` (any synonym, case-insensitive) may mean; [] when unknown."""
        return list(self._ids.get(name.strip().lower(), []))

    def ids(self, names: Sequence[str]) -> list[int]:
        """Names (any synonym, case-insensitive) to ids; unknown or ambiguous names raise ValueError."""
        if not self._ids:
            last = self.num_classes - 1
            raise ValueError(f"this checkpoint has no class names (no id2label); pass class ids 0..{last}")
        out = []
        for raw in names:
            key = raw.strip().lower()
            found = self._ids.get(key)
            if found is None:
                close = difflib.get_close_matches(key, self._ids, n=5, cutoff=0.6)
                hint = f"; close matches: {', '.join(repr(c) for c in close)}" if close else ""
                raise ValueError(f"unknown class name {raw!r}{hint}")
            if len(found) > 1:
                options = ", ".join(f"{i} ({self.labels[i]})" for i in found)
                raise ValueError(f"class name {raw!r} is ambiguous: {options}; pass the class id instead")
            out.append(found[0])
        return out

    def check_ids(self, class_ids: Sequence[int]) -> None:
        bad = [c for c in class_ids if not 0 <= c < self.num_classes]
        if bad:
            raise ValueError(f"class ids must lie in 0..{self.num_classes - 1}, got {bad[:5]}")
