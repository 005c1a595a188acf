//! Input checks shared by every document type: a refused input writes nothing.

use chrono::{DateTime, NaiveDate, Utc};

use crate::error::{Error, Result};

/// Longest name-like field (names, addresses, agencies), in characters.
pub(crate) const MAX_NAME: usize = 500;
/// Longest free text (a case note), in characters.
pub(crate) const MAX_NOTE: usize = 100_000;

/// Trimmed, non-empty, not too long.
pub(crate) fn required_text(field: &'static str, value: &str, max: usize) -> Result<String> {
    let v = value.trim();
    if v.is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    if v.chars().count() > max {
        return Err(Error::invalid(
            field,
            format!("is longer than {max} characters"),
        ));
    }
    if v.chars().any(|c| c == '\0') {
        return Err(Error::invalid(field, "contains a NUL character"));
    }
    Ok(v.to_string())
}

pub(crate) fn optional_text(
    field: &'static str,
    value: Option<&str>,
    max: usize,
) -> Result<Option<String>> {
    value.map(|v| required_text(field, v, max)).transpose()
}

pub(crate) fn date_not_future(
    field: &'static str,
    date: NaiveDate,
    now: DateTime<Utc>,
) -> Result<()> {
    if date > now.date_naive() {
        return Err(Error::invalid(field, format!("{date} is in the future")));
    }
    Ok(())
}

/// Parses `YYYY-MM-DD`.
pub fn parse_date(field: &'static str, value: &str) -> Result<NaiveDate> {
    NaiveDate::parse_from_str(value.trim(), "%Y-%m-%d").map_err(|_| {
        Error::invalid(
            field,
            format!("'{value}' is not a date (expected YYYY-MM-DD)"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_trimmed_and_must_not_be_empty() {
        assert_eq!(
            required_text("note text", "  hi ", 10).ok().as_deref(),
            Some("hi")
        );
        let err = required_text("note text", "   ", 10)
            .err()
            .map(|e| e.to_string());
        assert_eq!(err.as_deref(), Some("invalid note text: must not be empty"));
        assert!(required_text("name", "abcdef", 5).is_err());
    }

    #[test]
    fn future_dates_are_refused() {
        let now = Utc::now();
        let tomorrow = now.date_naive().succ_opt().unwrap_or(now.date_naive());
        assert!(date_not_future("date of birth", tomorrow, now).is_err());
        assert!(date_not_future("date of birth", now.date_naive(), now).is_ok());
        assert!(parse_date("date", "2024-02-30").is_err());
        assert!(parse_date("date", "2024-02-29").is_ok());
    }
}
