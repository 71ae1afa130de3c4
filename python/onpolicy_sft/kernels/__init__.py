"""Fused lm_head + policy-weighted log-likelihood (METHODS.md, "Loss level").

- ``reference.py``: the materialised plain-PyTorch spec every backend is tested against;
- ``weights.py``: options (``LossSpec``), sequences, the O(N) weight step, normaliser, stats;
- ``fused.py``: the chunked driver + autograd Function + ``fused_policy_loss``, with the
  plain-PyTorch row ops (the CPU backend);
- ``policy_loss.py``: the Triton row kernels (imported only when the triton backend runs).

Use :class:`onpolicy_sft.losses.PolicyLoss` rather than these modules directly.
"""
