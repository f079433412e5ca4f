//! Errors that mean "the input is wrong" (exit status 2) as opposed to "the
//! work failed" (exit status 1). Anything not wrapped in `InputError` is a
//! failure of the work.

use std::fmt;

#[derive(Debug)]
pub struct InputError(String);

impl InputError {
    pub fn new(msg: impl Into<String>) -> Self {
        InputError(msg.into())
    }
}

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InputError {}

/// Shorthand: `return bad_input!("...")`.
#[macro_export]
macro_rules! bad_input {
    ($($arg:tt)*) => { Err(anyhow::Error::new($crate::error::InputError::new(format!($($arg)*)))) };
}

/// The exit status for an error chain.
pub fn exit_code(err: &anyhow::Error) -> i32 {
    if err.chain().any(|e| e.is::<InputError>()) {
        2
    } else {
        1
    }
}
