"""What a sample set is asked for: its name, fanouts, batch size, epochs, seed and splits."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InvalidInputError
from ..graph.model import SPLITS
from ..names import check_name

EVAL_SPLITS = ("valid", "test")


@dataclass(frozen=True, slots=True)
class SampleConfig:
    name: str
    fanouts: tuple[int, ...]
    batch_size: int
    epochs: int
    seed: int = 0
    split: str = "train"
    eval_splits: tuple[str, ...] | None = None  # sampled once each after training's; None: the other splits

    @property
    def evals(self) -> tuple[str, ...]:
        """The evaluation splits to sample: ``eval_splits``, or every split but the training one."""
        return tuple(s for s in EVAL_SPLITS if s != self.split) if self.eval_splits is None else self.eval_splits

    def validate(self) -> None:
        check_name(self.name, "sample set name")
        if not self.fanouts or any(f == 0 or f < -1 for f in self.fanouts):
            raise InvalidInputError(f"fanouts {self.fanouts}: positive integers (or -1 for all neighbours)")
        if self.batch_size < 1:
            raise InvalidInputError(f"batch size must be at least 1, got {self.batch_size}")
        if self.epochs < 1:
            raise InvalidInputError(f"epochs must be at least 1, got {self.epochs}")
        if self.split not in SPLITS:
            raise InvalidInputError(f"split {self.split!r}: one of {', '.join(SPLITS)}")
        if any(s not in SPLITS or s == self.split for s in self.evals) or len(set(self.evals)) != len(self.evals):
            raise InvalidInputError(f"evaluation splits {self.evals}: distinct splits other than {self.split!r}")


def parse_fanouts(text: str) -> tuple[int, ...]:
    try:
        fanouts = tuple(int(x) for x in text.split(","))
    except ValueError as exc:
        raise InvalidInputError(f"fanouts {text!r}: comma-separated integers such as 10,10,10") from exc
    if not fanouts:
        raise InvalidInputError(f"fanouts {text!r}: comma-separated integers such as 10,10,10")
    return fanouts
