"""``legollm align ppo``: RLHF with PPO against a reward model that ``align reward`` trained.

The YAML holds every [`TrainConfig`][lego.train.config.TrainConfig] key (the top-level
``max_steps``, ``optim``... are PPO's optimizer steps: each rollout serves
``ppo.num_ppo_epochs * ppo.num_mini_batches`` of them), the shared keys of
[`TuningConfig`][lego.recipes.tuning.TuningConfig] (``model``, ``data``, ``output``,
``plots``...), ``reward_model`` (a directory written by ``legollm align reward``: its
``out_dir/model``) and a ``ppo:`` section (lego-align's [`PPOConfig`][lego.align.PPOConfig]).

``data.train`` is a JSON Lines file of prompt records (``prompt``: a string or messages;
other fields are ignored), for example the preference records of ``align reward`` itself.

Before any training: the config, the reward model directory (a sequence-classification
model, its tokenizer the policy's), ``out_dir`` and its lock, the prompts (every one
encoded, prompt plus ``ppo.max_completion_length`` within the context), the stop and pad
tokens. lego-align's [`PPOTrainer`][lego.align.PPOTrainer] then trains; ``metrics.jsonl``
holds TRL's metrics (``objective/scores``, ``objective/kl``, ``policy/clipfrac_avg``...);
SIGINT / SIGTERM save a checkpoint (exit 130 / 143) and ``resume=auto`` continues exactly.
At the end ``out_dir/model`` is the policy (merged, or the adapter with its base reference:
``output``) with ``value_head.safetensors`` beside its weights, and ``curves.png`` shows
the score, the KL, the RLHF reward, the losses and the clip fraction.

    >>> config = PPORecipeConfig.from_dict(
    ...     {"model": "m", "reward_model": "rm", "data": {"train": "prompts.jsonl"}}
    ... )
    >>> config.ppo.kl_coef, config.ppo.num_ppo_epochs
    (0.05, 4)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lego.align import PPOConfig, PPOTrainer, load_reward_model, save_value_head
from lego.align.reward import RewardModel
from lego.protocols import (
    CompatibilityError,
    ConfigError,
    FolderLock,
    FormatError,
    read_json,
)
from lego.recipes.loading import load_tokenizer
from lego.recipes.report import Curve
from lego.recipes.tuning import (
    Tuning,
    TuningConfig,
    TuningModel,
    TuningResult,
    build_tuning,
    export_causal_lm,
    record_base_model,
)
from lego.tokenize.fingerprint import tokenizer_fingerprint
from lego.train import TrainConfig, read_metrics

__all__ = [
    "PPORecipeConfig",
    "PPO_CURVES",
    "build_ppo",
    "run_ppo",
    "score_rise",
    "check_reward_dir",
]

PPO_CURVES = (
    Curve("reward model score", "objective/scores"),
    Curve("KL to the reference", "objective/kl"),
    Curve("RLHF reward (score - KL penalty)", "objective/rlhf_reward"),
    Curve("value loss", "loss/value_avg"),
    Curve("clip fraction", "policy/clipfrac_avg"),
)
"""The panels of a PPO run's ``curves.png``."""

_CLASSIFIER_SUFFIX = "ForSequenceClassification"


@dataclass(frozen=True, kw_only=True)
class PPORecipeConfig(TuningConfig):
    """A ``legollm align ppo`` config: lego-train keys, shared keys, ``reward_model``, ``ppo``.

    Attributes:
        reward_model: The reward model directory (``legollm align reward``'s
            ``out_dir/model``), trained from the policy's base model (same architecture
            and tokenizer).
        ppo: lego-align's [`PPOConfig`][lego.align.PPOConfig].
        out_dir: The run directory.
    """

    reward_model: str = ""
    ppo: PPOConfig = field(default_factory=PPOConfig)
    out_dir: str = "runs/ppo"

    def validate(self) -> None:
        """The shared checks, a reward model named, no held-out file, adapter output."""
        super().validate()
        self.check_adapter_output("ppo", self.ppo.finetune)
        if not self.reward_model.strip():
            raise ConfigError(
                "reward_model is empty: PPO needs a reward model",
                key="reward_model",
                hint="train one with `legollm align reward --config "
                "examples/align/reward-tiny.yaml` and give its out_dir/model",
            )
        if self.data.eval:
            raise ConfigError(
                "data.eval is set, but align ppo does not evaluate held-out prompts",
                key="data.eval",
                hint="remove data.eval (the reward model's score is logged every step)",
            )


def check_reward_dir(path: str | Path) -> Path:
    """The reward model directory exists and holds a sequence-classification model.

    Args:
        path: ``reward_model`` from the config.

    Returns:
        The directory.

    Raises:
        ConfigError: It does not exist, or is no reward model directory.
        FormatError: Its ``config.json`` cannot be read.
    """
    folder = Path(path)
    if not folder.is_dir():
        what = "is a file" if folder.exists() else "does not exist"
        raise ConfigError(
            f"reward_model {what}",
            path=folder,
            key="reward_model",
            hint="train one with `legollm align reward` and give its out_dir/model",
        )
    file = folder / "config.json"
    if not file.is_file():
        raise ConfigError(
            "reward_model has no config.json: it is no model directory",
            path=folder,
            key="reward_model",
            hint="give the out_dir/model folder of `legollm align reward`",
        )
    data = read_json(file, what="reward model configuration")
    architectures = data.get("architectures") if isinstance(data, dict) else None
    if not isinstance(architectures, list) or not any(
        isinstance(a, str) and a.endswith(_CLASSIFIER_SUFFIX) for a in architectures
    ):
        raise ConfigError(
            f"reward_model is not a reward model (architectures {architectures!r}; expected "
            f"a ...{_CLASSIFIER_SUFFIX} model, as `legollm align reward` writes)",
            path=folder,
            key="reward_model",
            hint="give the out_dir/model folder of `legollm align reward`, not a language model",
        )
    return folder


def _load_reward(config: PPORecipeConfig, source: TuningModel) -> RewardModel:
    """The reward model around a copy of the policy's base, its tokenizer checked."""
    folder = check_reward_dir(config.reward_model)
    try:
        theirs = load_tokenizer(None, folder)
    except ConfigError:
        theirs = None  # a directory without a tokenizer: only the vocabulary can be compared
    if theirs is not None and tokenizer_fingerprint(theirs) != source.tokenizer_hash:
        raise CompatibilityError(
            "the reward model's tokenizer differs from the policy's: it would read the "
            "policy's token ids as other text",
            path=folder,
            key="reward_model",
            hint="train the reward model from the policy's base model (the same tokenizer "
            "and add_special_tokens)",
        )
    try:
        return load_reward_model(folder, source.model, head_name=config.ppo.head_name)
    except (CompatibilityError, FormatError) as exc:
        raise type(exc)(
            f"the reward model does not fit the policy's architecture: {exc.message}",
            path=folder,
            key="reward_model",
            hint="train the reward model from the policy's base model",
        ) from None


def _make_ppo(config: PPORecipeConfig) -> Any:
    def make(
        source: TuningModel, train: TrainConfig, lock: FolderLock | None
    ) -> tuple[PPOTrainer, Any]:
        reward = _load_reward(config, source)  # before the policy gets its adapter
        trainer = PPOTrainer(
            model=source.model,
            tokenizer=source.tokenizer,
            train_data=config.data.train,
            reward_model=reward,
            config=config.ppo,
            train=train,
            tokenizer_hash=source.tokenizer_hash,
            lock=lock,
        )
        record_base_model(trainer.policy, source)

        def export(folder: Path) -> None:
            value_head = trainer.model.value_head.weight
            export_causal_lm(
                trainer.policy,
                folder,
                output=config.output,
                source=source,
                eos_ids=trainer.stop_ids,
                pad_id=trainer.pad_id,
            )
            save_value_head(value_head, folder)

        return trainer, export

    return make


def build_ppo(config: PPORecipeConfig) -> Tuning:
    """Check everything, lock ``out_dir``, load the models and the prompts, build the trainer.

    Args:
        config: The validated recipe config.

    Returns:
        The [`Tuning`][lego.recipes.tuning.Tuning], ready to run.

    Raises:
        ConfigError: A bad setting, a missing file or reward model, no pad token, a prompt
            that does not fit the context, an ``out_dir`` that holds another run or is being
            written.
        CompatibilityError: A reward model of another tokenizer or architecture.
        DataError: A bad record (file and line).
    """
    check_reward_dir(config.reward_model)
    return build_tuning(config, _make_ppo(config), curves=PPO_CURVES)


def run_ppo(config: PPORecipeConfig) -> TuningResult:
    """Train with PPO as ``config`` says; write the policy, its value head and the curves.

    Args:
        config: The validated recipe config.

    Returns:
        The [`TuningResult`][lego.recipes.tuning.TuningResult];
        ``score_rise()`` reads the score's rise from its
        ``out_dir``.
    """
    return build_ppo(config).run()


def score_rise(run_dir: str | Path, *, window: int = 5) -> tuple[float, float] | None:
    r"""The mean reward-model score of a PPO run's first and last ``window`` steps.

    Args:
        run_dir: The run directory (its ``metrics.jsonl``).
        window: Steps averaged at each end.

    Returns:
        ``(first, last)``, or None without ``objective/scores`` records.

    Example:
        >>> import tempfile, json
        >>> folder = Path(tempfile.mkdtemp())
        >>> rows = [{"step": s, "split": "train", "objective/scores": s} for s in (1, 2, 3)]
        >>> lines = "".join(json.dumps(r) + "\n" for r in rows)
        >>> _ = (folder / "metrics.jsonl").write_text(lines)
        >>> score_rise(folder, window=1)
        (1.0, 3.0)
    """
    found = sorted(
        (int(r["step"]), float(r["objective/scores"]))
        for r in read_metrics(Path(run_dir))
        if r.get("split") == "train" and isinstance(r.get("objective/scores"), (int, float))
    )
    if not found:
        return None
    values = [v for _, v in found]
    first, last = values[:window], values[-window:]
    return sum(first) / len(first), sum(last) / len(last)
