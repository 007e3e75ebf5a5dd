"""How many CPU threads the engine's decode steps use: the faster of two, measured as it runs.

A decode step is a few hundred small operations (per layer: norms, the attention over the
slots, activations, the linear layers). Each one that PyTorch or the native kernels run on
several threads ends at a barrier, and on a machine with more runnable threads than cores
(a shared box, other servers, a training job) a worker thread that the OS has descheduled
holds up the whole step at every barrier. In lego-serve's benchmark on 2 cores at a load
average of about 13, a 16-row GPT-2 decode step took 0.4 s on one thread and 1.5 to 1.9 s
on two; on a quiet machine the second thread streams weights in parallel and wins.

So the engine measures instead of guessing: [`ThreadChooser`][lego.serve.threads.ThreadChooser]
keeps a moving average of the step time per batch tier and per thread count (the default
count and 1), tries each count a few times per tier, then runs the faster one and re-tries
the other every ``explore_every`` steps, so it follows the machine's load as it changes.

Only decode steps are timed and switched: their results do not depend on the number of
threads (the native kernels split the outputs, not the sums; norms, attention and
activations split rows or heads), so a request's tokens are the same whichever count runs.
Prefills keep the default count.
"""

from __future__ import annotations

from lego.protocols import check_int

__all__ = ["ThreadChooser"]


class ThreadChooser:
    """Picks the thread count of each decode step from the measured step times.

    Args:
        threads: The default count (``torch.get_num_threads()``); 1 leaves nothing to choose.
        trials: Steps each count runs per tier before the averages decide.
        explore_every: After the trials, every this many steps of a tier run the count that
            is not the current best, so a change of load is noticed.
        decay: Weight of the newest step in the moving averages, in ``(0, 1]``.

    Example:
        >>> chooser = ThreadChooser(2, trials=1, explore_every=4)
        >>> chooser.pick(16)  # the default count first
        2
        >>> chooser.record(16, 2, 1.0)
        >>> chooser.pick(16)  # then the other one
        1
        >>> chooser.record(16, 1, 0.25)
        >>> [chooser.pick(16) for _ in range(4)]  # the faster; every 4th step the other
        [1, 1, 2, 1]
    """

    def __init__(
        self, threads: int, *, trials: int = 2, explore_every: int = 32, decay: float = 0.25
    ) -> None:
        check_int("threads", threads, minimum=1, owner="ThreadChooser")
        check_int("trials", trials, minimum=1, owner="ThreadChooser")
        check_int("explore_every", explore_every, minimum=2, owner="ThreadChooser")
        self.options: tuple[int, ...] = (threads, 1) if threads > 1 else (threads,)
        self.trials = trials
        self.explore_every = explore_every
        self.decay = min(max(float(decay), 1e-3), 1.0)
        self._mean: dict[tuple[int, int], float] = {}  # (tier, threads) -> seconds
        self._count: dict[tuple[int, int], int] = {}
        self._steps: dict[int, int] = {}  # tier -> steps picked

    def pick(self, tier: int) -> int:
        """The thread count for the next decode step of a ``tier``-row batch.

        Args:
            tier: Rows of the step's batch cache.

        Returns:
            One of ``options``.
        """
        if len(self.options) == 1:
            return self.options[0]
        step = self._steps.get(tier, 0)
        self._steps[tier] = step + 1
        untried = [t for t in self.options if self._count.get((tier, t), 0) < self.trials]
        if untried:
            return untried[step % len(untried)]
        best = min(self.options, key=lambda t: self._mean[(tier, t)])
        if step % self.explore_every == 0:
            return next(t for t in self.options if t != best)
        return best

    def record(self, tier: int, threads: int, seconds: float) -> None:
        """Add the measured time of a decode step run with ``threads`` threads.

        Args:
            tier: Rows of the step's batch cache.
            threads: The count it ran with (what ``pick`` returned).
            seconds: Its wall time.
        """
        key = (tier, threads)
        old = self._mean.get(key)
        self._mean[key] = seconds if old is None else old + self.decay * (seconds - old)
        self._count[key] = self._count.get(key, 0) + 1
