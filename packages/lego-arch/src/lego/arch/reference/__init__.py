"""Each model family as one self-contained file, for reading: GPT-2, Llama 3, Qwen 3.

In the manner of nanoGPT, each module below is a whole model in plain PyTorch, top to
bottom with shape comments: a config dataclass named like HF's ``config.json``, the
embeddings, attention, MLP, norms, blocks and head, and ``load_hf(folder)``, which loads the
same HF ``model.safetensors`` files as transformers with an explicit table of tensor names.
Each imports only torch, safetensors and the standard library, never another lego module.

- ``lego.arch.reference.gpt2``: ``GPT2Config``, ``GPT2``, ``load_hf`` (open it first).
- ``lego.arch.reference.llama3``: ``Llama3Config``, ``Llama3``, ``load_hf`` (RoPE with
  Llama 3.1's scaling, RMSNorm, grouped-query attention, SwiGLU).
- ``lego.arch.reference.qwen3``: ``Qwen3Config``, ``Qwen3``, ``load_hf`` (Llama 3 plus
  QK-norm and an independent head size).

They are not what the rest of LegoLLM runs: ``lego.arch.DecoderLM`` is the modular build
(components swapped by name, KV cache, padding masks, HF export) that everything else uses.
Tests hold both to the same logits, and to transformers'.
"""
