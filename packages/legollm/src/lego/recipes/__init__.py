"""LegoLLM, the application: the recipes that compose the bricks, and the ``legollm`` command.

The bricks (lego-tokenize, lego-layers, lego-arch, lego-data, lego-train, lego-generate,
lego-peft, lego-align, on lego-protocols) each do one job and never import each other's
internals, nor this package.
``lego.recipes`` is where they meet:

- [`lego.recipes.pretrain`][lego.recipes.pretrain]: a tokenizer, token data, a model and a
  Trainer from one YAML file ([`PretrainConfig`][lego.recipes.pretrain.PretrainConfig],
  [`run_pretrain()`][lego.recipes.pretrain.run_pretrain]);
- [`lego.recipes.pipeline`][lego.recipes.pipeline]: raw text to a talking model with a report
  ([`run_pipeline()`][lego.recipes.pipeline.run_pipeline]); its pictures and samples are
  [`lego.recipes.report`][lego.recipes.report];
- [`lego.recipes.finetune`][lego.recipes.finetune] and
  [`lego.recipes.align`][lego.recipes.align]: supervised fine-tuning (full, LoRA, QLoRA),
  DPO and reward models on a model that exists and local JSONL records
  ([`run_finetune()`][lego.recipes.finetune.run_finetune],
  [`run_dpo()`][lego.recipes.align.run_dpo], [`run_reward()`][lego.recipes.align.run_reward]),
  with what they share in [`lego.recipes.tuning`][lego.recipes.tuning];
- [`lego.recipes.loading`][lego.recipes.loading]: a model and its tokenizer from a model
  directory, a checkpoint or a run;
- [`lego.recipes.generate`][lego.recipes.generate] and [`lego.recipes.cli`][lego.recipes.cli]:
  the ``legollm`` command (``pipeline``, ``pretrain``, ``finetune``, ``align``, ``generate``,
  ``chat``, ``configs``);
- [`lego.recipes.configs`][lego.recipes.configs]: the shipped configs (``tiny``,
  ``gpt2-124m``).

    >>> from lego.recipes import shipped_configs
    >>> shipped_configs()
    ['gpt2-124m', 'tiny']
"""

from lego.recipes.__about__ import __version__
from lego.recipes.align import (
    DPORecipeConfig,
    GRPORecipeConfig,
    RewardRecipeConfig,
    build_dpo,
    build_grpo,
    build_reward,
    run_dpo,
    run_grpo,
    run_reward,
)
from lego.recipes.configs import find_config, read_recipe_config, shipped_configs
from lego.recipes.finetune import FinetuneConfig, build_finetune, run_finetune
from lego.recipes.loading import default_eos_ids, load_model, load_tokenizer
from lego.recipes.pipeline import PipelineConfig, PipelineResult, ReportSpec, run_pipeline
from lego.recipes.ppo import PPORecipeConfig, build_ppo, run_ppo
from lego.recipes.pretrain import (
    DataSpec,
    ModelSpec,
    PretrainConfig,
    Pretraining,
    PretrainResult,
    SampleSpec,
    build_pretraining,
    run_pretrain,
)
from lego.recipes.tuning import DataFiles, Tuning, TuningConfig, TuningResult

__all__ = [
    "__version__",
    # pretraining
    "PretrainConfig",
    "ModelSpec",
    "DataSpec",
    "SampleSpec",
    "Pretraining",
    "PretrainResult",
    "build_pretraining",
    "run_pretrain",
    # fine-tuning and alignment
    "TuningConfig",
    "DataFiles",
    "Tuning",
    "TuningResult",
    "FinetuneConfig",
    "build_finetune",
    "run_finetune",
    "DPORecipeConfig",
    "build_dpo",
    "run_dpo",
    "RewardRecipeConfig",
    "build_reward",
    "run_reward",
    "GRPORecipeConfig",
    "build_grpo",
    "run_grpo",
    "PPORecipeConfig",
    "build_ppo",
    "run_ppo",
    # the pipeline
    "PipelineConfig",
    "ReportSpec",
    "PipelineResult",
    "run_pipeline",
    # loading what training wrote
    "load_model",
    "load_tokenizer",
    "default_eos_ids",
    # configs
    "shipped_configs",
    "find_config",
    "read_recipe_config",
]
