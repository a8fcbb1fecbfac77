"""Strategy names (parallel.strategy) to classes: each strategy module registers its class with
`@register("name")`; build_strategy (trainer/strategies/__init__.py) looks the name up here."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from trainer.strategies.base import Strategy

StrategyClass = TypeVar("StrategyClass", bound="type[Strategy]")

STRATEGIES: dict[str, type[Strategy]] = {}


def register(name: str) -> Callable[[StrategyClass], StrategyClass]:
    """Class decorator: `name` is the parallel.strategy value that selects the class (and its `name`)."""

    def add(cls: StrategyClass) -> StrategyClass:
        if name in STRATEGIES:
            raise ValueError(f"strategy {name!r} is registered twice ({STRATEGIES[name].__name__}, {cls.__name__})")
        cls.name = name
        STRATEGIES[name] = cls
        return cls

    return add


def strategy_class(name: str) -> type[Strategy]:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ValueError(f"unknown parallel.strategy {name!r}; known: {', '.join(sorted(STRATEGIES))}") from None
