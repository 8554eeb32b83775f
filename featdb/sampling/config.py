"""What a sample set is asked for: its name, fanouts, batch size, epochs, seed and splits."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InvalidInputError
from ..graph.model import SPLITS
from ..names import check_name

EVAL_SPLITS = ("valid", "test")
MAX_COUNT = 2**31 - 1  # fanouts and batch sizes index int32 arrays
MAX_EPOCHS = 1_000_000


@dataclass(frozen=True, slots=True)
class SampleConfig:
    name: str
    fanouts: tuple[int, ...]
    batch_size: int
    epochs: int
    seed: int = 0
    split: str = "train"
    eval_splits: tuple[str, ...] | None = None  # sampled once each after training's; None: the other splits
    per_relation: bool = False  # typed graphs: each layer's fanout per relation (DGL's heterograph sampling)

    @property
    def evals(self) -> tuple[str, ...]:
        """The evaluation splits to sample: ``eval_splits``, or every split but the training one."""
        return tuple(s for s in EVAL_SPLITS if s != self.split) if self.eval_splits is None else self.eval_splits

    def validate(self) -> None:
        check_name(self.name, "sample set name")
        if not self.fanouts or any(f == 0 or f < -1 or f > MAX_COUNT for f in self.fanouts):
            raise InvalidInputError(
                f"fanouts {','.join(map(str, self.fanouts))}: integers from 1 to {MAX_COUNT} (or -1 for all neighbours)"
            )
        if not 1 <= self.batch_size <= MAX_COUNT:
            raise InvalidInputError(f"batch size must be from 1 to {MAX_COUNT}, got {self.batch_size}")
        if not 1 <= self.epochs <= MAX_EPOCHS:
            raise InvalidInputError(f"epochs must be from 1 to {MAX_EPOCHS}, got {self.epochs}")
        if not 0 <= self.seed < 2**63:
            raise InvalidInputError(f"seed must be from 0 to 2**63 - 1, got {self.seed}")
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
