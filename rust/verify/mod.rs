//! Answer extraction, normalisation and equivalence (see METHODS.md, "Verification semantics").
