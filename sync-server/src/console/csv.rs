//! CSV downloads: one writer (the `csv` crate's quoting), with cells that a
//! spreadsheet would run as a formula (`=`, `+`, `-`, `@`, tab, CR) made
//! text by a leading apostrophe.

use axum::http::{StatusCode, header};
use axum::response::IntoResponse;

use super::{ConsoleError, ConsoleResult};

/// A cell a spreadsheet will show as text.
fn cell(value: &str) -> std::borrow::Cow<'_, str> {
    match value.chars().next() {
        Some('=' | '+' | '-' | '@' | '\t' | '\r') => format!("'{value}").into(),
        _ => value.into(),
    }
}

/// `rows` (the first is the header) as a CSV attachment named `filename`.
pub fn download(filename: &str, rows: &[Vec<String>]) -> ConsoleResult {
    let mut w = ::csv::Writer::from_writer(Vec::new());
    for row in rows {
        w.write_record(row.iter().map(|v| cell(v).into_owned()))
            .map_err(|e| ConsoleError::Internal(format!("csv: {e}")))?;
    }
    let bytes = w
        .into_inner()
        .map_err(|e| ConsoleError::Internal(format!("csv: {e}")))?;
    let safe: String = filename
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{safe}\""),
            ),
        ],
        bytes,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formulas_become_text() {
        assert_eq!(cell("=HYPERLINK(\"x\")"), "'=HYPERLINK(\"x\")");
        assert_eq!(cell("-2"), "'-2");
        assert_eq!(cell("12"), "12");
        assert_eq!(cell(""), "");
    }
}
