"""Model helpers every stage shares: path resolution, logit transforms, EOS ids.

Imports nothing from the rest of the package but the leaf module ``hub``, so
engines, losses, training, rewriting and evaluation all use the same definitions.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from onpolicy_sft.hub import require_hub


def resolve_model_path(model: str | os.PathLike[str], flag: str = "--model") -> str:
    """Return ``model`` as a string; a local-looking path that does not exist is an error.

    "org/name" (one slash, no leading ``.``, ``/`` or ``~``) is left to the hub,
    once :func:`onpolicy_sft.hub.require_hub` found that the hub (or its cache)
    can serve it.
    """
    path = os.fspath(model)
    expanded = os.path.expanduser(path)
    if os.path.isdir(expanded):
        return expanded
    hub_like = path.count("/") == 1 and not path.startswith((".", "/", "~"))
    if os.path.exists(expanded) or not hub_like:
        raise FileNotFoundError(
            f"model path {path!r} does not exist or is not a directory; pass a directory "
            f"with config.json, weights and tokenizer files (or a hub name 'org/name') to {flag}"
        )
    require_hub(path, repo_type="model", flag=flag)
    return path


def eos_ids(model: Any, tokenizer: Any) -> set[int]:
    """Every token id that ends generation: the tokenizer's EOS and the generation config's."""
    ids: set[int] = set()
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen_cfg = getattr(model, "generation_config", None)
    cfg_eos = getattr(gen_cfg, "eos_token_id", None)
    if isinstance(cfg_eos, int):
        ids.add(cfg_eos)
    elif cfg_eos:
        ids.update(int(i) for i in cfg_eos)
    return ids


def logit_transform(model: Any) -> str | None:
    """Describe a final-logit transform the model applies after its lm_head (Gemma-2
    soft-capping, Cohere's logit scale), or None. Code that applies the lm_head itself
    (the fused loss, HFEngine.score) would silently compute other log-probs for such models."""
    config = getattr(model, "config", None)
    softcap = getattr(config, "final_logit_softcapping", None)
    if softcap not in (None, 0):
        return f"{type(model).__name__} soft-caps its logits (final_logit_softcapping={softcap})"
    scale = getattr(config, "logit_scale", None)
    if scale not in (None, 1, 1.0):
        return f"{type(model).__name__} scales its logits (logit_scale={scale})"
    return None


def response_ids(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of written responses as training sees them: the text, then EOS
    (unless the text already ends in it)."""
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise ValueError("the tokenizer has no eos_token_id; the loss must fall on EOS")
    out = []
    for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]:
        ids = [int(i) for i in ids]
        if not ids or ids[-1] != eos:
            ids.append(int(eos))
        out.append(ids)
    return out
