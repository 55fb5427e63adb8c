//! One error type for the whole crate. Every message names the argument at fault, what was
//! expected and what came, and maps to the Python exception a PyTorch user would expect.
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::PyErr;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// Right type, wrong value or shape: becomes `ValueError`.
    Value(String),
    /// Wrong type or dtype: becomes `TypeError`.
    Type(String),
    /// The environment failed (CUDA driver or NVRTC): becomes `RuntimeError`.
    Runtime(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn value(msg: impl Into<String>) -> Self {
        Error::Value(msg.into())
    }
    pub fn type_(msg: impl Into<String>) -> Self {
        Error::Type(msg.into())
    }
    pub fn runtime(msg: impl Into<String>) -> Self {
        Error::Runtime(msg.into())
    }
    pub fn message(&self) -> &str {
        match self {
            Error::Value(m) | Error::Type(m) | Error::Runtime(m) => m,
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for Error {}

impl From<tch::TchError> for Error {
    fn from(err: tch::TchError) -> Self {
        // libtorch errors carry a C++ backtrace after the first line; the first line is the message.
        let text = err.to_string();
        let first = text.lines().next().unwrap_or("libtorch error").to_owned();
        Error::Value(format!("libtorch rejected the operation: {first}"))
    }
}

impl From<Error> for PyErr {
    fn from(err: Error) -> PyErr {
        match err {
            Error::Value(m) => PyValueError::new_err(m),
            Error::Type(m) => PyTypeError::new_err(m),
            Error::Runtime(m) => PyRuntimeError::new_err(m),
        }
    }
}
