//! The tier ledger: append-only journal, recovery, tier assignment, statistics, merge.
