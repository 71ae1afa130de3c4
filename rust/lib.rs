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

    /// (correct, pred_answer, gold_answer, reason); onpolicy_sft.verify wraps it in `Verdict`.
    type VerdictTuple = (Option<bool>, Option<String>, Option<String>, String);

    fn verdict_tuple(v: crate::verify::Verdict) -> VerdictTuple {
        (v.correct, v.pred_answer, v.gold_answer, v.reason)
    }

    fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
        if let Some(s) = p.downcast_ref::<&str>() {
            (*s).to_string()
        } else if let Some(s) = p.downcast_ref::<String>() {
            s.clone()
        } else {
            "unknown panic".to_string()
        }
    }

    fn verify_one(i: usize, pred: &str, gold: &str) -> Result<VerdictTuple, String> {
        std::panic::catch_unwind(|| verdict_tuple(crate::verify::verify(pred, gold))).map_err(|p| {
            format!(
                "the verifier failed on input {i} ({} prediction bytes, {} gold bytes): {}; \
                 this is a bug, please report it with that input",
                pred.len(),
                gold.len(),
                panic_message(p.as_ref())
            )
        })
    }

    /// verify(prediction, gold) -> (correct, pred_answer, gold_answer, reason)
    #[pyfunction]
    #[pyo3(name = "verify")]
    fn py_verify(py: Python<'_>, prediction: String, gold: String) -> PyResult<VerdictTuple> {
        py.detach(|| verify_one(0, &prediction, &gold))
            .map_err(pyo3::exceptions::PyRuntimeError::new_err)
    }

    /// verify_batch(predictions, golds, threads=None) -> list of verdict tuples
    #[pyfunction]
    #[pyo3(name = "verify_batch", signature = (predictions, golds, threads=None))]
    fn py_verify_batch(
        py: Python<'_>,
        predictions: Vec<String>,
        golds: Vec<String>,
        threads: Option<usize>,
    ) -> PyResult<Vec<VerdictTuple>> {
        use rayon::prelude::*;
        if predictions.len() != golds.len() {
            return Err(pyo3::exceptions::PyValueError::new_err(format!(
                "got {} predictions but {} golds; pass one gold answer per prediction",
                predictions.len(),
                golds.len()
            )));
        }
        if threads == Some(0) {
            return Err(pyo3::exceptions::PyValueError::new_err(
                "threads=0 is not allowed; pass None (all cores) or a positive number",
            ));
        }
        let run = |preds: &[String], golds: &[String]| -> Result<Vec<VerdictTuple>, String> {
            preds
                .par_iter()
                .zip(golds.par_iter())
                .enumerate()
                .map(|(i, (p, g))| verify_one(i, p, g))
                .collect()
        };
        let out = py.detach(|| -> Result<Vec<VerdictTuple>, String> {
            match threads {
                None => run(&predictions, &golds),
                Some(n) => {
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(n)
                        .build()
                        .map_err(|e| format!("could not start {n} threads: {e}"))?;
                    pool.install(|| run(&predictions, &golds))
                }
            }
        });
        out.map_err(pyo3::exceptions::PyRuntimeError::new_err)
    }

    /// verify_case(prediction, gold, harness, match_types, precision, strict,
    /// allow_set_relation_comp): the fast path called the way math-verify's own
    /// test suite calls it ("compare_strings" or "verify_parse_default").
    #[pyfunction]
    #[pyo3(name = "verify_case")]
    #[allow(clippy::too_many_arguments)]
    fn py_verify_case(
        py: Python<'_>,
        prediction: String,
        gold: String,
        harness: String,
        match_types: Vec<String>,
        precision: u32,
        strict: bool,
        allow_set_relation_comp: bool,
    ) -> PyResult<VerdictTuple> {
        use crate::verify::{extract::ExtractOpts, Options};
        let opts = match harness.as_str() {
            "verify_parse_default" => Options {
                wrap_gold: false,
                ..Options::default()
            },
            "compare_strings" => Options {
                extract: ExtractOpts {
                    latex: match_types.iter().any(|m| m == "latex"),
                    expr: match_types.iter().any(|m| m == "expr"),
                    boxed_first: true,
                },
                wrap_gold: false,
                float_rounding: precision,
                strict,
                allow_set_relation_comp,
            },
            other => {
                return Err(pyo3::exceptions::PyValueError::new_err(format!(
                    "unknown harness {other:?}; use \"compare_strings\" or \"verify_parse_default\""
                )))
            }
        };
        py.detach(|| {
            std::panic::catch_unwind(|| {
                verdict_tuple(crate::verify::verify_with(&prediction, &gold, &opts))
            })
        })
        .map_err(|p| {
            pyo3::exceptions::PyRuntimeError::new_err(format!(
                "verify_case failed on input 0: {}",
                panic_message(p.as_ref())
            ))
        })
    }

    /// extract_answer(text) -> the answer the extraction ladder finds, or None
    #[pyfunction]
    #[pyo3(name = "extract_answer")]
    fn py_extract_answer(py: Python<'_>, text: String) -> PyResult<Option<String>> {
        py.detach(|| std::panic::catch_unwind(|| crate::verify::extract_answer(&text)))
            .map_err(|p| {
                pyo3::exceptions::PyRuntimeError::new_err(format!(
                    "extract_answer failed on input 0: {}",
                    panic_message(p.as_ref())
                ))
            })
    }

    pub fn register_verify(m: &Bound<'_, PyModule>) -> PyResult<()> {
        m.add_function(wrap_pyfunction!(py_verify, m)?)?;
        m.add_function(wrap_pyfunction!(py_verify_batch, m)?)?;
        m.add_function(wrap_pyfunction!(py_extract_answer, m)?)?;
        m.add_function(wrap_pyfunction!(py_verify_case, m)?)?;
        m.add(
            "VERIFY_MAX_PREDICTION_BYTES",
            crate::verify::MAX_PREDICTION_BYTES,
        )?;
        m.add("VERIFY_MAX_GOLD_BYTES", crate::verify::MAX_GOLD_BYTES)?;
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
