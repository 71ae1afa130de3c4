"""Subcommands of the `onpolicy-sft` CLI; see onpolicy_sft.cli."""
