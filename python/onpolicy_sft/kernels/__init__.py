"""Fused lm_head + policy-weighted log-likelihood (docs/methods.md, "Loss level").

- ``reference.py``: the materialised plain-PyTorch spec every backend is tested against;
- ``weights.py``: sequences, the O(N) weight step, normaliser, statistics;
- ``torch_rows.py``: the row-op interface and its plain-PyTorch implementation (CPU);
- ``triton_rows.py``: the Triton row kernels (imported only when the triton backend runs);
- ``chunked.py``: the chunked driver, the autograd Function and ``fused_policy_loss``.

The options are :class:`onpolicy_sft.config.LossConfig`. Use
:class:`onpolicy_sft.losses.PolicyLoss` rather than these modules directly.
"""
