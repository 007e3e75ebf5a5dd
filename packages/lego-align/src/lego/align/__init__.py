"""lego-align: supervised fine-tuning, reward models, log-probabilities and the preference losses.

With ``model`` any ``lego.protocols.CausalLM`` and ``reference`` its frozen copy::

    from lego.align import build_preference_batch, dpo_loss, sequence_logprobs
    batch = build_preference_batch(pairs, pad_id=0, eos_id=2, max_length=512)
    args = (batch.input_ids, batch.attention_mask, batch.completion_mask)
    chosen, rejected = sequence_logprobs(model, *args).chunk()
    with torch.no_grad():
        ref_chosen, ref_rejected = sequence_logprobs(reference, *args).chunk()
    out = dpo_loss(chosen.sum, rejected.sum, ref_chosen.sum, ref_rejected.sum, beta=0.1)
    out.loss.backward()

- The batch: [`build_preference_batch()`][lego.align.build_preference_batch] (TRL's
  ``[chosen; rejected]`` layout, EOS appended, the prompt cut from the left) and
  [`build_completion_batch()`][lego.align.build_completion_batch] ->
  [`CompletionBatch`][lego.align.CompletionBatch].
- Log-probabilities: [`sequence_logprobs()`][lego.align.sequence_logprobs] ->
  [`SequenceLogprobs`][lego.align.SequenceLogprobs] (sum, mean, count per row), the
  log-softmax in chunks; [`HeadInputs`][lego.align.HeadInputs] to skip the full logits.
- Supervised fine-tuning on lego-train's Trainer: [`SFTTrainer`][lego.align.SFTTrainer] with
  [`SFTConfig`][lego.align.SFTConfig] (completions trained, prompts cut from the left,
  packing, full / LoRA / QLoRA), [`SFTDataset`][lego.align.SFTDataset],
  [`check_stop_tokens()`][lego.align.check_stop_tokens] (the model will stop).
- Reward models: [`RewardModel`][lego.align.RewardModel] (a ``score`` head on any
  ``CausalLM``, saved for transformers' ``AutoModelForSequenceClassification``),
  [`RewardTrainer`][lego.align.RewardTrainer], [`evaluate_rewards()`][lego.align.evaluate_rewards].
- Preference optimisation: [`DPOTrainer`][lego.align.DPOTrainer] with
  [`DPOConfig`][lego.align.DPOConfig] (every ``dpo_loss`` loss type; the reference as the
  disabled adapter, a frozen copy, or precomputed and cached on disk).
- RLHF with PPO: [`PPOTrainer`][lego.align.PPOTrainer] with [`PPOConfig`][lego.align.PPOConfig]
  (one completion per prompt, a reward model or function, a value head on the policy's last
  hidden state: [`PolicyWithValueHead`][lego.align.PolicyWithValueHead], GAE, the clipped
  policy and value losses: [`PPOObjective`][lego.align.PPOObjective]).
- Losses (pure functions returning [`LossOutput`][lego.align.LossOutput]):
  [`dpo_loss()`][lego.align.dpo_loss] (DPO, cDPO, rDPO, SLiC hinge, IPO, EXO, NCA, BCO,
  SPPO, AOT, APO, DiscoPOP, RPO, f-DPO), [`simpo_loss()`][lego.align.simpo_loss],
  [`orpo_loss()`][lego.align.orpo_loss], [`kto_loss()`][lego.align.kto_loss],
  [`reward_loss()`][lego.align.reward_loss] (Bradley-Terry).
"""

from lego.align.__about__ import __version__
from lego.align.advantages import (
    ADVANTAGE_SCALES,
    GroupAdvantages,
    gae,
    group_advantages,
    whiten,
)
from lego.align.dpo import (
    DPOCollator,
    DPOConfig,
    DPOObjective,
    DPOTrainer,
    ReferenceCache,
    dpo_pairs,
    precompute_reference_logps,
    reference_fingerprint,
)
from lego.align.finetune import FinetuneSettings, prepare_model
from lego.align.grpo import GRPOConfig, GRPOEvaluation, GRPOObjective, GRPOTrainer
from lego.align.logprobs import (
    CompletionBatch,
    HeadInputs,
    SequenceLogprobs,
    build_completion_batch,
    build_preference_batch,
    sequence_logprobs,
    token_logprobs,
)
from lego.align.losses import (
    DPO_LOSS_TYPES,
    F_DIVERGENCES,
    LossOutput,
    dpo_loss,
    kto_loss,
    orpo_loss,
    reward_loss,
    simpo_loss,
)
from lego.align.policy_losses import (
    GRPO_LOSS_TYPES,
    KL_ESTIMATORS,
    PolicyLossOutput,
    PPORewards,
    grpo_loss,
    kl_penalty,
    ppo_policy_loss,
    ppo_rewards,
    ppo_value_loss,
)
from lego.align.ppo import (
    PPO_KL_ESTIMATORS,
    VALUE_HEAD_FILE,
    PolicyWithValueHead,
    PPOConfig,
    PPOObjective,
    PPOTrainer,
    load_reward_model,
    read_value_head,
    save_value_head,
)
from lego.align.ppo_rollouts import PPOBatchSource
from lego.align.reward import (
    RewardCollator,
    RewardConfig,
    RewardModel,
    RewardObjective,
    RewardPair,
    RewardTrainer,
    evaluate_rewards,
    reward_pairs,
)
from lego.align.rewards import (
    RewardFunction,
    RewardFunctions,
    RewardScores,
    answers_match,
    exact_answer_reward,
    extract_answer,
    format_reward,
)
from lego.align.rollouts import (
    CompletionEvaluation,
    CompletionLogprobs,
    GRPOBatchSource,
    GRPOPrompt,
    completion_logprobs,
    encode_prompts,
    evaluate_completions,
    generation_seed,
    stop_and_pad_ids,
)
from lego.align.sft import (
    SFTConfig,
    SFTDataset,
    SFTObjective,
    SFTTrainer,
    accepts_document_ids,
    truncate_left,
)
from lego.align.tokens import (
    StopTokens,
    check_stop_tokens,
    generation_stop_ids,
    preference_pad_id,
    resolve_pad_id,
)

__all__ = [
    "__version__",
    # the batch
    "build_preference_batch",
    "build_completion_batch",
    "CompletionBatch",
    # log-probabilities
    "sequence_logprobs",
    "token_logprobs",
    "SequenceLogprobs",
    "HeadInputs",
    # losses
    "dpo_loss",
    "simpo_loss",
    "orpo_loss",
    "kto_loss",
    "reward_loss",
    "LossOutput",
    "DPO_LOSS_TYPES",
    "F_DIVERGENCES",
    # supervised fine-tuning
    "SFTTrainer",
    "SFTConfig",
    "SFTDataset",
    "SFTObjective",
    "accepts_document_ids",
    "truncate_left",
    "FinetuneSettings",
    "prepare_model",
    "StopTokens",
    "check_stop_tokens",
    "resolve_pad_id",
    "preference_pad_id",
    "generation_stop_ids",
    # reward models
    "RewardModel",
    "RewardTrainer",
    "RewardConfig",
    "RewardObjective",
    "RewardCollator",
    "RewardPair",
    "reward_pairs",
    "evaluate_rewards",
    # preference optimisation
    "DPOTrainer",
    "DPOConfig",
    "DPOObjective",
    "DPOCollator",
    "ReferenceCache",
    "dpo_pairs",
    "precompute_reference_logps",
    "reference_fingerprint",
    # online RL: advantages, GRPO / PPO objectives, reward functions
    "group_advantages",
    "GroupAdvantages",
    "ADVANTAGE_SCALES",
    "gae",
    "whiten",
    "kl_penalty",
    "grpo_loss",
    "ppo_policy_loss",
    "ppo_value_loss",
    "ppo_rewards",
    "PolicyLossOutput",
    "PPORewards",
    "GRPO_LOSS_TYPES",
    "KL_ESTIMATORS",
    "RewardFunction",
    "RewardFunctions",
    "RewardScores",
    "exact_answer_reward",
    "extract_answer",
    "answers_match",
    "format_reward",
    # GRPO trainer
    "GRPOTrainer",
    "GRPOConfig",
    "GRPOObjective",
    "GRPOEvaluation",
    "GRPOBatchSource",
    "GRPOPrompt",
    "encode_prompts",
    "stop_and_pad_ids",
    "generation_seed",
    "completion_logprobs",
    "CompletionLogprobs",
    "evaluate_completions",
    "CompletionEvaluation",
    # PPO trainer
    "PPOTrainer",
    "PPOConfig",
    "PPOObjective",
    "PPOBatchSource",
    "PolicyWithValueHead",
    "load_reward_model",
    "read_value_head",
    "save_value_head",
    "VALUE_HEAD_FILE",
    "PPO_KL_ESTIMATORS",
]
