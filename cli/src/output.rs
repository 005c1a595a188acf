//! Printing to stdout: a line at a time, flushed at once (a script reading
//! ids sees each as soon as its record is saved), or one JSON document.

use std::io::Write;

use linkbook_core::Error;

/// Prints one line and flushes it.
pub fn line(text: impl std::fmt::Display) -> Result<(), Error> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")
        .and_then(|()| out.flush())
        .map_err(|source| Error::Io {
            context: "could not write to stdout".into(),
            source,
        })
}

/// Prints `value` as one JSON document.
pub fn json<T: serde::Serialize>(value: &T) -> Result<(), Error> {
    let text = serde_json::to_string_pretty(value).map_err(|e| Error::Io {
        context: "could not encode JSON".into(),
        source: std::io::Error::other(e),
    })?;
    line(text)
}

/// An optional field for text output.
pub fn or_dash(value: Option<&str>) -> &str {
    value.unwrap_or("-")
}
