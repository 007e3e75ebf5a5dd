"""[`LogitsProcessorList`][lego.generate.LogitsProcessorList]: processors applied in order."""

from __future__ import annotations

from collections.abc import Iterable

from torch import Tensor

from lego.protocols import ConfigError, LogitsProcessor

__all__ = ["LogitsProcessorList"]


class LogitsProcessorList(list[LogitsProcessor]):
    """A list of [`LogitsProcessor`][lego.protocols.LogitsProcessor]s, itself a processor.

    Calling it applies each processor in order. Any callable with the signature
    ``(input_ids, scores) -> scores`` fits, transformers' processors included.

    Args:
        processors: The processors, in the order they apply.

    Raises:
        ConfigError: An element is not callable.
    """

    def __init__(self, processors: Iterable[LogitsProcessor] = ()) -> None:
        items = list(processors)
        for number, item in enumerate(items):
            if not callable(item):
                raise ConfigError(
                    f"logits processor {number} is not callable: {item!r}",
                    key=f"logits_processor[{number}]",
                    hint="pass objects with __call__(input_ids, scores) -> scores",
                )
        super().__init__(items)

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        """Apply every processor in order.

        Args:
            input_ids: Every token so far, shape ``(B, T)``.
            scores: Next-token scores, shape ``(B, vocab_size)``.

        Returns:
            The processed scores, shape ``(B, vocab_size)``.
        """
        for processor in self:
            scores = processor(input_ids, scores)
        return scores
