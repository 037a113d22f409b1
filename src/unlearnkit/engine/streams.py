"""Data streams of the engine: shuffled passes that a checkpoint can replay exactly."""

from __future__ import annotations

from typing import Any

import torch

from unlearnkit.data.examples import Batch
from unlearnkit.errors import UnlearnkitError


class Pass:
    """One pass over a stream's loader; remembers where its shuffle started and how far it has got."""

    def __init__(self, loader, start: torch.Tensor) -> None:
        self.start = start
        self.it = iter(loader)
        self.consumed = 0

    def next(self) -> Batch | None:
        try:
            batch = next(self.it)
        except StopIteration:
            return None
        self.consumed += 1
        return batch

    def state(self) -> dict[str, Any]:
        return {"start": self.start, "consumed": self.consumed}


class Stream:
    """A prepared loader and the generator that shuffles it.

    A pass draws its order from the generator when it starts, so a pass is reproduced exactly from the
    generator state recorded just before it started plus the number of batches it has given out.
    """

    def __init__(self, name: str, loader, generator: torch.Generator) -> None:
        self.name, self.loader, self.generator = name, loader, generator

    def __len__(self) -> int:
        return len(self.loader)

    def start(self) -> Pass:
        return Pass(self.loader, self.generator.get_state())

    def replay(self, state: dict[str, Any]) -> Pass:
        self.generator.set_state(state["start"])
        p = self.start()
        for _ in range(int(state["consumed"])):
            if p.next() is None:
                raise UnlearnkitError(
                    f"the {self.name} data is shorter than when the checkpoint was written; start afresh"
                )
        return p


def next_cycled(iters: dict[str, Pass], streams: dict[str, Stream], name: str) -> Batch:
    p = iters.get(name)
    if p is not None:
        batch = p.next()
        if batch is not None:
            return batch
    iters[name] = streams[name].start()
    batch = iters[name].next()
    if batch is None:
        raise UnlearnkitError(f"the {name} set gave no batch")
    return batch
