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

    fn verify_one(
        i: usize,
        pred: &str,
        gold: &str,
        opts: &crate::verify::Options,
    ) -> Result<VerdictTuple, String> {
        std::panic::catch_unwind(|| verdict_tuple(crate::verify::verify_with(pred, gold, opts)))
            .map_err(|p| {
                format!(
                    "the verifier failed on input {i} ({} prediction bytes, {} gold bytes): {}; \
                 this is a bug, please report it with that input",
                    pred.len(),
                    gold.len(),
                    panic_message(p.as_ref())
                )
            })
    }

    fn strict_options(strict: bool) -> crate::verify::Options {
        crate::verify::Options {
            math_strict: strict,
            ..crate::verify::Options::default()
        }
    }

    /// verify(prediction, gold, strict=False) -> (correct, pred_answer, gold_answer, reason)
    #[pyfunction]
    #[pyo3(name = "verify", signature = (prediction, gold, strict=false))]
    fn py_verify(
        py: Python<'_>,
        prediction: String,
        gold: String,
        strict: bool,
    ) -> PyResult<VerdictTuple> {
        let opts = strict_options(strict);
        py.detach(|| verify_one(0, &prediction, &gold, &opts))
            .map_err(pyo3::exceptions::PyRuntimeError::new_err)
    }

    /// Most threads `verify_batch` accepts: 4x the cores this process may use
    /// (more only adds scheduling overhead; 10,000 threads took minutes).
    fn max_threads() -> usize {
        4 * std::thread::available_parallelism().map_or(1, |n| n.get())
    }

    /// One rayon pool per thread count, built once and shared by every caller
    /// (building a pool per call costs more than verifying a small batch).
    /// Pools belong to the process that built them: a forked child has none of
    /// their threads (rayon's global pool would hang there), so it builds its
    /// own and leaves the parent's alone.
    fn pool(n: usize) -> Result<std::sync::Arc<rayon::ThreadPool>, String> {
        use std::collections::HashMap;
        use std::sync::{Arc, Mutex, OnceLock};
        type Pools = (u32, HashMap<usize, Arc<rayon::ThreadPool>>);
        static POOLS: OnceLock<Mutex<Pools>> = OnceLock::new();
        let mut guard = POOLS
            .get_or_init(|| Mutex::new((std::process::id(), HashMap::new())))
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let (pid, pools) = &mut *guard;
        if *pid != std::process::id() {
            // the parent's pools: their threads do not exist here, and dropping
            // them would signal threads that are not ours
            for (_, p) in pools.drain() {
                std::mem::forget(p);
            }
            *pid = std::process::id();
        }
        if let Some(p) = pools.get(&n) {
            return Ok(p.clone());
        }
        let p = Arc::new(
            rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build()
                .map_err(|e| format!("could not start {n} threads: {e}"))?,
        );
        pools.insert(n, p.clone());
        Ok(p)
    }

    /// verify_batch(predictions, golds, threads=None, strict=False) -> list of verdict tuples
    #[pyfunction]
    #[pyo3(
        name = "verify_batch",
        signature = (predictions, golds, threads=None, strict=false)
    )]
    fn py_verify_batch(
        py: Python<'_>,
        predictions: Vec<String>,
        golds: Vec<String>,
        threads: Option<i64>,
        strict: bool,
    ) -> PyResult<Vec<VerdictTuple>> {
        let opts = strict_options(strict);
        use rayon::prelude::*;
        if predictions.len() != golds.len() {
            return Err(pyo3::exceptions::PyValueError::new_err(format!(
                "got {} predictions but {} golds; pass one gold answer per prediction",
                predictions.len(),
                golds.len()
            )));
        }
        let cap = max_threads();
        let threads = match threads {
            None => None,
            Some(n) if n >= 1 && (n as u64) <= cap as u64 => Some(n as usize),
            Some(n) => {
                return Err(pyo3::exceptions::PyValueError::new_err(format!(
                    "threads={n} is out of range; pass None (all cores) or 1..={cap} \
                     (at most 4x the {} cores)",
                    cap / 4
                )))
            }
        };
        let run = |preds: &[String], golds: &[String]| -> Result<Vec<VerdictTuple>, String> {
            preds
                .par_iter()
                .zip(golds.par_iter())
                .enumerate()
                .map(|(i, (p, g))| verify_one(i, p, g, &opts))
                .collect()
        };
        let out = py.detach(|| -> Result<Vec<VerdictTuple>, String> {
            if predictions.len() <= 1 {
                return predictions
                    .iter()
                    .zip(&golds)
                    .enumerate()
                    .map(|(i, (p, g))| verify_one(i, p, g, &opts))
                    .collect();
            }
            let n = threads.unwrap_or(cap / 4);
            pool(n)?.install(|| run(&predictions, &golds))
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
                math_strict: false,
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
        m.add("VERIFY_MAX_THREADS", max_threads())?;
        Ok(())
    }

    // ------------------------------------------------------------ end verify

    // ---------------------------------------------------------------- ledger
    // (bindings of crate::ledger live in this section)

    mod ledger_py {
        use std::panic::{catch_unwind, AssertUnwindSafe};
        use std::path::PathBuf;
        use std::sync::Mutex;

        use pyo3::exceptions::{PyOSError, PyTypeError, PyValueError};
        use pyo3::intern;
        use pyo3::prelude::*;
        use pyo3::pybacked::PyBackedStr;
        use pyo3::sync::PyOnceLock;
        use pyo3::types::{PyBool, PyBytes, PyDict, PyList, PyType};

        use crate::error::Error;
        use crate::ledger::format::FP_LEN;
        use crate::ledger::index::Selection;
        use crate::ledger::{self, AttemptIn, Columns, Ledger, OnChange, OpenOptions2};

        /// LedgerError, LedgerCorruptError, LedgerLockedError: made when the
        /// module loads, deriving from onpolicy_sft.errors.OnpolicyError (a
        /// Python class, so `create_exception!` cannot name it as the base).
        struct ErrorTypes {
            base: Py<PyType>,
            corrupt: Py<PyType>,
            locked: Py<PyType>,
        }

        static ERRORS: PyOnceLock<ErrorTypes> = PyOnceLock::new();

        fn error_types(py: Python<'_>) -> PyResult<&'static ErrorTypes> {
            ERRORS.get_or_try_init(py, || {
                let root = py
                    .import("onpolicy_sft.errors")?
                    .getattr("OnpolicyError")?
                    .cast_into::<PyType>()?;
                let base = PyErr::new_type(
                    py,
                    c"onpolicy_sft._core.LedgerError",
                    Some(c"A ledger operation failed."),
                    Some(&root),
                    None,
                )?;
                let sub = |name: &std::ffi::CStr, doc: &std::ffi::CStr| {
                    PyErr::new_type(py, name, Some(doc), Some(base.bind(py)), None)
                };
                Ok(ErrorTypes {
                    corrupt: sub(
                        c"onpolicy_sft._core.LedgerCorruptError",
                        c"A ledger file is damaged (the message names the file and byte offset).",
                    )?,
                    locked: sub(
                        c"onpolicy_sft._core.LedgerLockedError",
                        c"Another process holds the ledger's writer lock (the message names it).",
                    )?,
                    base,
                })
            })
        }

        fn raise(py: Python<'_>, ty: fn(&ErrorTypes) -> &Py<PyType>, msg: String) -> PyErr {
            match error_types(py) {
                Ok(t) => PyErr::from_type(ty(t).bind(py).clone(), msg),
                Err(e) => e,
            }
        }

        fn ledger_error(py: Python<'_>, msg: String) -> PyErr {
            raise(py, |t| &t.base, msg)
        }

        fn to_py(py: Python<'_>, e: Error) -> PyErr {
            let msg = e.to_string();
            match e {
                Error::Corrupt { .. } => raise(py, |t| &t.corrupt, msg),
                Error::Locked { .. } => raise(py, |t| &t.locked, msg),
                Error::Io { .. } => PyOSError::new_err(msg),
                Error::TooLarge { .. } => PyValueError::new_err(msg),
                _ => ledger_error(py, msg),
            }
        }

        /// Run `f` without the GIL; a panic becomes a LedgerError.
        fn guarded<T: Send>(
            py: Python<'_>,
            f: impl FnOnce() -> crate::error::Result<T> + Send,
        ) -> PyResult<T> {
            match py.detach(|| catch_unwind(AssertUnwindSafe(f))) {
                Ok(r) => r.map_err(|e| to_py(py, e)),
                Err(p) => {
                    let what = p
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    Err(ledger_error(
                        py,
                        format!("internal error in the ledger (a bug; please report it): {what}"),
                    ))
                }
            }
        }

        fn stage_of(s: &str) -> PyResult<u8> {
            ledger::stage_code(s).ok_or_else(|| {
                PyValueError::new_err(format!(
                    "stage {s:?} unknown; use \"self\", \"guided\" or \"hinted\""
                ))
            })
        }

        /// Two byte strings, read on the Python side as numpy arrays.
        type BytesPair<'py> = (Bound<'py, PyBytes>, Bound<'py, PyBytes>);

        fn bytes_pair<'py>(py: Python<'py>, a: &[u8], b: &[u8]) -> BytesPair<'py> {
            (PyBytes::new(py, a), PyBytes::new(py, b))
        }

        fn selection_of(s: &str) -> PyResult<Selection> {
            Selection::parse(s).ok_or_else(|| {
                PyValueError::new_err(format!(
                    "selection {s:?} unknown; use \"likeliest\", \"first\", \"random\" or \"shortest\""
                ))
            })
        }

        /// numpy.bool_ (what a comparison of numpy values gives): a bool too.
        fn is_numpy_bool(v: &Bound<'_, PyAny>) -> bool {
            let t = v.get_type();
            let module = t.module().map(|m| m.to_string()).unwrap_or_default();
            let name = t.name().map(|n| n.to_string()).unwrap_or_default();
            module == "numpy" && (name == "bool" || name == "bool_")
        }

        /// The little-endian u32s / u64s packed in `b` (numpy's `tobytes()`).
        fn le_u32s(b: &[u8]) -> Vec<u32> {
            b.chunks_exact(4)
                .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
                .collect()
        }

        fn le_u64s(b: &[u8]) -> Vec<u64> {
            b.chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
                .collect()
        }

        /// `xs` packed as bytes by `to` (a `to_le_bytes`).
        fn le_bytes<T: Copy, const N: usize>(xs: &[T], to: fn(T) -> [u8; N]) -> Vec<u8> {
            xs.iter().flat_map(|&x| to(x)).collect()
        }

        fn u32_at(b: &[u8], i: usize) -> u32 {
            u32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]])
        }

        fn columns_dict<'py>(py: Python<'py>, c: Columns) -> PyResult<Bound<'py, PyDict>> {
            fn raw<T: Copy>(v: &[T]) -> &[u8] {
                // SAFETY: plain integer data viewed as bytes (little-endian host, asserted below).
                unsafe {
                    std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v))
                }
            }
            const _: () = assert!(cfg!(target_endian = "little"));
            let d = PyDict::new(py);
            d.set_item("problem", PyBytes::new(py, raw(&c.problem)))?;
            d.set_item("stage", PyBytes::new(py, &c.stage))?;
            d.set_item("sample", PyBytes::new(py, raw(&c.sample)))?;
            d.set_item("correct", PyBytes::new(py, &c.correct))?;
            d.set_item("has_base", PyBytes::new(py, &c.has_base))?;
            d.set_item("text", PyBytes::new(py, &c.text))?;
            d.set_item("text_off", PyBytes::new(py, raw(&c.text_off)))?;
            d.set_item("reason", PyBytes::new(py, &c.reason))?;
            d.set_item("reason_off", PyBytes::new(py, raw(&c.reason_off)))?;
            d.set_item("tokens", PyBytes::new(py, &c.tokens))?;
            d.set_item("behavior", PyBytes::new(py, &c.behavior))?;
            d.set_item("tok_off", PyBytes::new(py, raw(&c.tok_off)))?;
            d.set_item("base", PyBytes::new(py, &c.base))?;
            d.set_item("base_off", PyBytes::new(py, raw(&c.base_off)))?;
            Ok(d)
        }

        /// The Rust ledger; `onpolicy_sft.ledger.Ledger` is its Python face.
        #[pyclass(module = "onpolicy_sft._core", name = "LedgerCore")]
        pub struct LedgerCore {
            inner: Mutex<Option<Ledger>>,
            path: String,
        }

        impl LedgerCore {
            fn with<T: Send>(
                &self,
                py: Python<'_>,
                f: impl FnOnce(&mut Ledger) -> crate::error::Result<T> + Send,
            ) -> PyResult<T> {
                let path = &self.path;
                let inner = &self.inner;
                guarded(py, move || {
                    let mut g = crate::error::lock_unpoisoned(inner, &format!("ledger {path}"))?;
                    match g.as_mut() {
                        Some(l) => f(l),
                        None => Err(Error::Msg(format!(
                            "ledger {path} is closed; open it again with Ledger.open"
                        ))),
                    }
                })
            }
        }

        #[pymethods]
        impl LedgerCore {
            #[new]
            #[pyo3(signature = (path, *, create=true, readonly=false, repair=false, segment_bytes=None))]
            fn new(
                py: Python<'_>,
                path: PathBuf,
                create: bool,
                readonly: bool,
                repair: bool,
                segment_bytes: Option<u64>,
            ) -> PyResult<Self> {
                let opts = OpenOptions2 {
                    create,
                    readonly,
                    repair,
                    segment_bytes: segment_bytes.unwrap_or(ledger::DEFAULT_SEGMENT_BYTES),
                };
                let p = path.clone();
                let l = guarded(py, move || Ledger::open(&p, &opts))?;
                Ok(LedgerCore {
                    inner: Mutex::new(Some(l)),
                    path: path.display().to_string(),
                })
            }

            /// Warnings from opening (torn tails cut, repairs).
            fn warnings(&self, py: Python<'_>) -> PyResult<Vec<String>> {
                self.with(py, |l| Ok(l.warnings().to_vec()))
            }

            fn __len__(&self, py: Python<'_>) -> PyResult<usize> {
                self.with(py, |l| Ok(l.len()))
            }

            fn close(&self) {
                let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
                g.take();
            }

            fn add_problems(
                &self,
                py: Python<'_>,
                ids: Vec<PyBackedStr>,
                references: Vec<PyBackedStr>,
            ) -> PyResult<()> {
                self.with(py, move |l| {
                    let i: Vec<&str> = ids.iter().map(|s| &**s).collect();
                    let r: Vec<&str> = references.iter().map(|s| &**s).collect();
                    l.add_problems(&i, &r)
                })
            }

            /// Record attempts. Scalars are read from each object's attributes
            /// (problem_id, stage, sample_index, correct, text, reason); arrays
            /// come concatenated: `tok_lens` u32 per attempt, `tokens` u32,
            /// `behavior` f32 (same lengths), `base_lens` i32 per attempt (-1 =
            /// no base log-probs), `base` f32.
            #[allow(clippy::too_many_arguments)]
            fn record<'py>(
                &self,
                py: Python<'py>,
                attempts: &Bound<'py, PyList>,
                tok_lens: &[u8],
                tokens: &[u8],
                behavior: &[u8],
                base_lens: &[u8],
                base: &[u8],
            ) -> PyResult<()> {
                let n = attempts.len();
                if tok_lens.len() != 4 * n || base_lens.len() != 4 * n {
                    return Err(PyValueError::new_err(format!(
                        "record: {n} attempts but {} token lengths and {} base lengths",
                        tok_lens.len() / 4,
                        base_lens.len() / 4
                    )));
                }
                struct Row {
                    pid: PyBackedStr,
                    stage: u8,
                    sample: u32,
                    correct: bool,
                    text: PyBackedStr,
                    reason: PyBackedStr,
                }
                let mut rows = Vec::with_capacity(n);
                for (i, a) in attempts.iter().enumerate() {
                    let field = |name: &Bound<'py, pyo3::types::PyString>| {
                        a.getattr(name).map_err(|e| {
                            PyTypeError::new_err(format!("attempt #{i}: {e}; pass Attempt objects"))
                        })
                    };
                    let wrong_type = |name: &Bound<'py, pyo3::types::PyString>,
                                      v: &Bound<'py, PyAny>,
                                      want: &str| {
                        PyTypeError::new_err(format!(
                            "attempt #{i}: {} must be {want}, got {} {}",
                            name.to_string_lossy(),
                            v.get_type()
                                .name()
                                .map(|s| s.to_string())
                                .unwrap_or_default(),
                            v.repr().map(|s| s.to_string()).unwrap_or_default()
                        ))
                    };
                    let text_field = |name: &Bound<'py, pyo3::types::PyString>| {
                        let v = field(name)?;
                        v.extract::<PyBackedStr>()
                            .map_err(|_| wrong_type(name, &v, "a str"))
                    };
                    let stage = text_field(intern!(py, "stage"))?;
                    let stage = stage_of(&stage)
                        .map_err(|e| PyValueError::new_err(format!("attempt #{i}: {e}")))?;
                    let name = intern!(py, "sample_index");
                    let v = field(name)?;
                    if v.is_instance_of::<PyBool>() {
                        return Err(wrong_type(name, &v, "an int"));
                    }
                    let sample = v.extract::<u32>().map_err(|_| {
                        if v.hasattr(intern!(py, "__index__")).unwrap_or(false) {
                            PyValueError::new_err(format!(
                                "attempt #{i}: sample_index must be in 0..2**32, got {}",
                                v.repr().map(|s| s.to_string()).unwrap_or_default()
                            ))
                        } else {
                            wrong_type(name, &v, "an int")
                        }
                    })?;
                    let name = intern!(py, "correct");
                    let v = field(name)?;
                    let correct = if let Ok(b) = v.cast::<PyBool>() {
                        b.is_true()
                    } else if is_numpy_bool(&v) {
                        v.is_truthy()?
                    } else {
                        return Err(wrong_type(name, &v, "a bool (True or False)"));
                    };
                    rows.push(Row {
                        pid: text_field(intern!(py, "problem_id"))?,
                        stage,
                        sample,
                        correct,
                        text: text_field(intern!(py, "text"))?,
                        reason: text_field(intern!(py, "reason"))?,
                    });
                }
                let mut ins = Vec::with_capacity(n);
                let (mut t, mut b) = (0usize, 0usize);
                for (i, r) in rows.iter().enumerate() {
                    let nt = 4 * u32_at(tok_lens, i) as usize;
                    let nb = i32::from_le_bytes(base_lens[4 * i..4 * i + 4].try_into().unwrap());
                    if t + nt > tokens.len() || t + nt > behavior.len() {
                        return Err(PyValueError::new_err(
                            "record: token arrays shorter than their lengths",
                        ));
                    }
                    let base_slice = if nb >= 0 {
                        let nb = 4 * nb as usize;
                        if b + nb > base.len() {
                            return Err(PyValueError::new_err(
                                "record: base array shorter than its lengths",
                            ));
                        }
                        b += nb;
                        Some(&base[b - nb..b])
                    } else {
                        None
                    };
                    ins.push(AttemptIn {
                        problem_id: &r.pid,
                        stage: r.stage,
                        sample_index: r.sample,
                        correct: r.correct,
                        text: &r.text,
                        reason: &r.reason,
                        token_ids: &tokens[t..t + nt],
                        behavior: &behavior[t..t + nt],
                        base: base_slice,
                    });
                    t += nt;
                }
                self.with(py, move |l| l.record(&ins))
            }

            fn finish_stage(
                &self,
                py: Python<'_>,
                ids: Vec<PyBackedStr>,
                stage: &str,
            ) -> PyResult<()> {
                let s = stage_of(stage)?;
                self.with(py, move |l| {
                    let i: Vec<&str> = ids.iter().map(|s| &**s).collect();
                    l.finish_stage(&i, s)
                })
            }

            fn pending<'py>(&self, py: Python<'py>, stage: &str) -> PyResult<Bound<'py, PyList>> {
                let s = stage_of(stage)?;
                let ids = self.with(py, move |l| {
                    Ok(l.pending(s)
                        .into_iter()
                        .map(|p| l.problem_id(p).to_string())
                        .collect::<Vec<_>>())
                })?;
                PyList::new(py, ids)
            }

            /// Every problem id, in ledger order.
            fn problem_ids<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
                let ids = self.with(py, |l| {
                    Ok((0..l.len() as u32)
                        .map(|p| l.problem_id(p).to_string())
                        .collect::<Vec<_>>())
                })?;
                PyList::new(py, ids)
            }

            fn has_problem(&self, py: Python<'_>, problem_id: &str) -> PyResult<bool> {
                self.with(py, |l| Ok(l.lookup(problem_id).is_some()))
            }

            /// Add problems, or bring known ones up to date by fingerprint
            /// (`fingerprints`: FINGERPRINT_BYTES per id, concatenated).
            /// `on_change`: "set_aside" or "error". Returns what it did.
            #[pyo3(signature = (ids, references, fingerprints, on_change))]
            fn sync_problems<'py>(
                &self,
                py: Python<'py>,
                ids: Vec<PyBackedStr>,
                references: Vec<PyBackedStr>,
                fingerprints: Option<&[u8]>,
                on_change: &str,
            ) -> PyResult<Bound<'py, PyDict>> {
                let on_change = match on_change {
                    "set_aside" => OnChange::SetAside,
                    "error" => OnChange::Refuse,
                    other => {
                        return Err(PyValueError::new_err(format!(
                            "on_change {other:?} unknown; use \"set_aside\" or \"error\""
                        )))
                    }
                };
                let fps: Option<Vec<[u8; FP_LEN]>> = match fingerprints {
                    None => None,
                    Some(b) if b.len() == FP_LEN * ids.len() => Some(
                        b.chunks_exact(FP_LEN)
                            .map(|c| c.try_into().expect("chunk of FP_LEN"))
                            .collect(),
                    ),
                    Some(b) => {
                        return Err(PyValueError::new_err(format!(
                            "sync_problems: {} fingerprint bytes for {} ids; pass {FP_LEN} per id",
                            b.len(),
                            ids.len()
                        )))
                    }
                };
                let (r, changed) = self.with(py, move |l| {
                    let i: Vec<&str> = ids.iter().map(|s| &**s).collect();
                    let rr: Vec<&str> = references.iter().map(|s| &**s).collect();
                    let r = l.sync_problems(&i, &rr, fps.as_deref(), on_change)?;
                    let changed: Vec<String> =
                        r.changed.iter().map(|&k| i[k].to_string()).collect();
                    Ok((r, changed))
                })?;
                let d = PyDict::new(py);
                d.set_item("added", r.added)?;
                d.set_item("unchanged", r.unchanged)?;
                d.set_item("adopted", r.adopted)?;
                d.set_item("changed", changed)?;
                d.set_item("set_aside_attempts", r.set_aside_attempts)?;
                Ok(d)
            }

            /// Set aside the live attempts of these problems: (problems, attempts).
            fn set_aside(&self, py: Python<'_>, ids: Vec<PyBackedStr>) -> PyResult<(u64, u64)> {
                self.with(py, move |l| {
                    let i: Vec<&str> = ids.iter().map(|s| &**s).collect();
                    l.set_aside(&i)
                })
            }

            /// FINGERPRINT_BYTES per problem in ledger order (zeros: none).
            fn fingerprints<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
                let b = self.with(py, |l| {
                    let mut out = Vec::with_capacity(FP_LEN * l.len());
                    for p in 0..l.len() as u32 {
                        out.extend_from_slice(l.fingerprint(p).unwrap_or(&[0; FP_LEN]));
                    }
                    Ok(out)
                })?;
                Ok(PyBytes::new(py, &b))
            }

            /// Columns of every attempt of `problem_id`, oldest first.
            fn attempts<'py>(
                &self,
                py: Python<'py>,
                problem_id: &str,
            ) -> PyResult<Bound<'py, PyDict>> {
                let c = self.with(py, |l| match l.lookup(problem_id) {
                    Some(p) => l.attempts(p),
                    None => Err(Error::Msg(format!(
                        "problem {problem_id:?} is not in the ledger; add it with add_problems first"
                    ))),
                })?;
                columns_dict(py, c)
            }

            /// Columns of the attempts at these locations (u64 each).
            fn read_locs<'py>(&self, py: Python<'py>, locs: &[u8]) -> PyResult<Bound<'py, PyDict>> {
                let locs = le_u64s(locs);
                let c = self.with(py, move |l| l.read_locs(&locs))?;
                columns_dict(py, c)
            }

            /// References of these problems (u32 ordinals each): (bytes, i64 offsets).
            fn references<'py>(
                &self,
                py: Python<'py>,
                problems: &[u8],
            ) -> PyResult<BytesPair<'py>> {
                let ps = le_u32s(problems);
                let (data, off) = self.with(py, move |l| {
                    if let Some(&p) = ps.iter().find(|&&p| p as usize >= l.len()) {
                        return Err(Error::Msg(format!("problem #{p} out of range")));
                    }
                    l.references(&ps)
                })?;
                Ok(bytes_pair(py, &data, &le_bytes(&off, i64::to_le_bytes)))
            }

            /// (tier codes u8 per problem: 0 self, 1 guided, 2 hinted, 3 expert;
            /// chosen attempt locations u64 per problem, 0 for expert)
            #[pyo3(signature = (selection="likeliest", seed=0))]
            fn assign<'py>(
                &self,
                py: Python<'py>,
                selection: &str,
                seed: u64,
            ) -> PyResult<BytesPair<'py>> {
                let sel = selection_of(selection)?;
                let (locs, tier) = self.with(py, move |l| {
                    let a = l.assign(sel, seed);
                    Ok((l.chosen_locs(&a), a.tier))
                })?;
                Ok(bytes_pair(py, &tier, &le_bytes(&locs, u64::to_le_bytes)))
            }

            #[pyo3(signature = (selection="likeliest", seed=0))]
            fn stats<'py>(
                &self,
                py: Python<'py>,
                selection: &str,
                seed: u64,
            ) -> PyResult<Bound<'py, PyDict>> {
                let sel = selection_of(selection)?;
                let s = self.with(py, move |l| Ok(l.stats(sel, seed)))?;
                let d = PyDict::new(py);
                d.set_item("problems", s.problems)?;
                d.set_item("attempts", s.attempts)?;
                let stages = PyDict::new(py);
                for (name, c, tried, solved) in &s.stages {
                    let e = PyDict::new(py);
                    e.set_item("attempts", c.attempts)?;
                    e.set_item("correct", c.correct)?;
                    e.set_item(
                        "pass_rate",
                        if c.attempts > 0 {
                            c.correct as f64 / c.attempts as f64
                        } else {
                            f64::NAN
                        },
                    )?;
                    e.set_item("problems_tried", tried)?;
                    e.set_item("problems_solved", solved)?;
                    stages.set_item(name, e)?;
                }
                for (name, k) in &s.finished {
                    if let Some(e) = stages.get_item(name)? {
                        e.set_item("problems_finished", k)?;
                    }
                }
                d.set_item("stages", stages)?;
                let tiers = PyDict::new(py);
                let mean = PyDict::new(py);
                for (name, k, m, with_base) in &s.tiers {
                    tiers.set_item(name, k)?;
                    if name != "expert" {
                        let e = PyDict::new(py);
                        e.set_item("mean", m)?;
                        e.set_item("with_base", with_base)?;
                        mean.set_item(name, e)?;
                    }
                }
                d.set_item("tiers", tiers)?;
                d.set_item("mean_base_logprob", mean)?;
                d.set_item("selection", selection)?;
                d.set_item("fingerprinted", s.fingerprinted)?;
                let aside = PyDict::new(py);
                aside.set_item("problems", s.set_aside_problems)?;
                aside.set_item("attempts", s.set_aside_attempts)?;
                d.set_item("set_aside", aside)?;
                d.set_item("index_bytes", s.index_bytes)?;
                d.set_item("segments", s.segments)?;
                d.set_item("disk_bytes", s.disk_bytes)?;
                Ok(d)
            }

            /// Merge shard ledgers into a new ledger at `out`; returns warnings.
            #[staticmethod]
            fn merge(py: Python<'_>, paths: Vec<PathBuf>, out: PathBuf) -> PyResult<Vec<String>> {
                guarded(py, move || Ledger::merge(&paths, &out))
            }
        }

        pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
            m.add_class::<LedgerCore>()?;
            let t = error_types(m.py())?;
            m.add("LedgerError", t.base.clone_ref(m.py()))?;
            m.add("LedgerCorruptError", t.corrupt.clone_ref(m.py()))?;
            m.add("LedgerLockedError", t.locked.clone_ref(m.py()))?;
            m.add("FINGERPRINT_BYTES", FP_LEN)?;
            Ok(())
        }
    }

    pub fn register_ledger(m: &Bound<'_, PyModule>) -> PyResult<()> {
        ledger_py::register(m)
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
