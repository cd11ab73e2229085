"""visualtok.generate: a LlamaGen-style GPT over any tokenizer's codes, its samplers and heads.

    gpt = create_model("gpt_b", layout=tokenizer.code_layout)      # head picked from the layout
    codes = gpt.generate(labels, cfg_scale=2.0, top_k=1000)         # [B, N, F], static KV cache
    images = generate_images(gpt, tokenizer, labels, cfg_scale=2.0)

Files: ``gpt.py`` (model + presets), ``blocks.py`` (RMSNorm/SwiGLU block), ``heads.py`` (flat,
per-factor causal, per-bit heads; code embeddings), ``sampling.py`` (top-k/top-p, CFG schedules),
``autoregressive.py`` (cached AR loop), ``maskgit.py`` (parallel decoding), ``tokens.py`` (token
shards), ``tokenbridge.py`` (continuous tokenizer + PTQ), ``pipeline.py`` (codes <-> images).
Its training task is ``visualtok.train.generator_task``.
"""

from .autoregressive import generate_ar
from .gpt import GPT, GPTConfig, GPTOutput
from .maskgit import generate_maskgit
from .pipeline import class_balanced_labels, generate_images
from .sampling import SamplingConfig, apply_cfg, cfg_scale_at, filter_logits
from .tokens import TokenDataset, pretokenize_images

__all__ = [
    "GPT",
    "GPTConfig",
    "GPTOutput",
    "SamplingConfig",
    "TokenDataset",
    "apply_cfg",
    "cfg_scale_at",
    "class_balanced_labels",
    "filter_logits",
    "generate_ar",
    "generate_images",
    "generate_maskgit",
    "pretokenize_images",
]
