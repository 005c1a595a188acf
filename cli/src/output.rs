//! Printing: one line at a time (flushed, so a script reading ids sees each
//! as soon as it is saved) or one JSON document.

use std::io::Write;

use linkbook_core::Error;

#[derive(Debug)]
pub struct Output;

impl Output {
    pub fn stdout() -> Self {
        Output
    }

    pub fn line(&self, text: &str) -> Result<(), Error> {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{text}")
            .and_then(|_| out.flush())
            .map_err(|source| Error::Io {
                context: "could not write to stdout".into(),
                source,
            })
    }
}

/// Prints `value` as one JSON document.
pub fn print_json<T: serde::Serialize>(value: &T) -> Result<(), Error> {
    let text = serde_json::to_string_pretty(value).map_err(|e| Error::Io {
        context: "could not encode JSON".into(),
        source: std::io::Error::other(e),
    })?;
    Output.line(&text)
}
