//! onpolicy-sft's Rust core.
//!
//! `verify` (answer extraction and equivalence) and `ledger` (the crash-safe
//! tier ledger) are plain Rust. This file is the one boundary with Python:
//! the `python` module below is the only code that knows PyO3. Arguments are
//! converted while holding the GIL, the work runs with the GIL released, and
//! a panic is caught and turned into a Python exception, never unwinding
//! across the boundary.

pub mod error;
pub mod ledger;
pub mod verify;

#[cfg(feature = "python")]
mod python {
    use pyo3::prelude::*;

    // ---------------------------------------------------------------- verify
    // (bindings of crate::verify live in this section)

    pub fn register_verify(_m: &Bound<'_, PyModule>) -> PyResult<()> {
        Ok(())
    }

    // ------------------------------------------------------------ end verify

    // ---------------------------------------------------------------- ledger
    // (bindings of crate::ledger live in this section)

    pub fn register_ledger(_m: &Bound<'_, PyModule>) -> PyResult<()> {
        Ok(())
    }

    // ------------------------------------------------------------ end ledger

    #[pymodule]
    fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
        m.add("__version__", env!("CARGO_PKG_VERSION"))?;
        register_verify(m)?;
        register_ledger(m)?;
        Ok(())
    }
}
