//! Time spans in the form of the `jose` package (`"30s"`, `"15 min"`, `"1hr"`, `"2 days ago"`).
//!
//! Used for every duration in the configuration and for `expirationTime` of public tokens.
//! A year is 365.25 days; months are refused because their length is ambiguous. One extension of
//! jose's form: milliseconds (`"200ms"`), which configuration timeouts need.

use std::fmt;
use std::time::Duration;

const MILLI: f64 = 0.001;
const MINUTE: f64 = 60.0;
const HOUR: f64 = 60.0 * MINUTE;
const DAY: f64 = 24.0 * HOUR;
const WEEK: f64 = 7.0 * DAY;
const YEAR: f64 = 365.25 * DAY;

/// A signed span in milliseconds: negative spans lie in the past.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct TimeSpan {
    millis: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeSpanError {
    #[error("empty time span")]
    Empty,
    #[error("`{0}` is not a time span: expected a number and a unit such as \"30s\", \"15 min\", \"1hr\", \"2 days\"")]
    Malformed(String),
    #[error("unknown unit `{0}`: use sec, min, hour, day, week or year (months are ambiguous and not accepted)")]
    UnknownUnit(String),
    #[error("time span `{0}` is too large")]
    TooLarge(String),
}

impl TimeSpan {
    /// Saturates rather than overflowing: a configured number of seconds may be absurd.
    pub const fn from_seconds(seconds: i64) -> Self {
        Self {
            millis: seconds.saturating_mul(1000),
        }
    }

    pub const fn from_millis(millis: i64) -> Self {
        Self { millis }
    }

    /// Whole seconds, rounded as jose rounds.
    pub fn seconds(self) -> i64 {
        (self.millis as f64 / 1000.0).round() as i64
    }

    pub const fn is_past(self) -> bool {
        self.millis < 0
    }

    /// The span as a `Duration` when it is strictly positive.
    pub fn as_positive_duration(self) -> Option<Duration> {
        (self.millis > 0).then(|| Duration::from_millis(self.millis as u64))
    }

    /// Parses the jose form: `[+|-]<number>[ ]<unit>[ ago| from now]`, case-insensitive.
    pub fn parse(input: &str) -> Result<Self, TimeSpanError> {
        let text = input.trim();
        if text.is_empty() {
            return Err(TimeSpanError::Empty);
        }
        let lower = text.to_ascii_lowercase();
        let (body, past_suffix) = if let Some(rest) = lower.strip_suffix(" ago") {
            (rest.trim_end(), true)
        } else if let Some(rest) = lower.strip_suffix(" from now") {
            (rest.trim_end(), false)
        } else {
            (lower.as_str(), false)
        };
        let (body, negative) = match body.as_bytes().first() {
            Some(b'-') => (body[1..].trim_start(), true),
            Some(b'+') => (body[1..].trim_start(), false),
            _ => (body, false),
        };

        let number_end = body
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(body.len());
        let (number, unit) = body.split_at(number_end);
        let unit = unit.trim_start();
        if number.is_empty() || number.starts_with('.') || number.ends_with('.') || number.matches('.').count() > 1 {
            return Err(TimeSpanError::Malformed(input.to_string()));
        }
        if unit.is_empty() || !unit.chars().all(|c| c.is_ascii_alphabetic()) {
            return Err(TimeSpanError::Malformed(input.to_string()));
        }
        let value: f64 = number
            .parse()
            .map_err(|_| TimeSpanError::Malformed(input.to_string()))?;
        let factor = unit_seconds(unit).ok_or_else(|| TimeSpanError::UnknownUnit(unit.to_string()))?;

        // jose rounds to whole seconds; milliseconds keep their precision.
        let seconds = value * factor;
        let millis = if factor < 1.0 {
            (seconds * 1000.0).round()
        } else {
            seconds.round() * 1000.0
        };
        if !millis.is_finite() || millis > i64::MAX as f64 / 4.0 {
            return Err(TimeSpanError::TooLarge(input.to_string()));
        }
        let millis = millis as i64;
        Ok(Self {
            millis: if negative || past_suffix { -millis } else { millis },
        })
    }
}

fn unit_seconds(unit: &str) -> Option<f64> {
    Some(match unit {
        "ms" | "msec" | "msecs" | "millisecond" | "milliseconds" => MILLI,
        "sec" | "secs" | "second" | "seconds" | "s" => 1.0,
        "minute" | "minutes" | "min" | "mins" | "m" => MINUTE,
        "hour" | "hours" | "hr" | "hrs" | "h" => HOUR,
        "day" | "days" | "d" => DAY,
        "week" | "weeks" | "w" => WEEK,
        "year" | "years" | "yr" | "yrs" | "y" => YEAR,
        _ => return None,
    })
}

impl fmt::Display for TimeSpan {
    /// Formats in the largest unit that divides the span exactly, in a form `parse` reads back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let magnitude = self.millis.unsigned_abs();
        let sign = if self.millis < 0 { "-" } else { "" };
        let (n, unit) = [(WEEK, "w"), (DAY, "d"), (HOUR, "h"), (MINUTE, "m"), (1.0, "s")]
            .iter()
            .map(|(size, unit)| ((*size * 1000.0) as u64, *unit))
            .find(|(size, _)| magnitude > 0 && magnitude % size == 0)
            .map(|(size, unit)| (magnitude / size, unit))
            .unwrap_or((magnitude, "ms"));
        write!(f, "{sign}{n}{unit}")
    }
}

impl std::str::FromStr for TimeSpan {
    type Err = TimeSpanError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_unit_of_the_jose_form_is_understood() {
        let cases: &[(&str, i64)] = &[
            ("30s", 30),
            ("1 sec", 1),
            ("2 secs", 2),
            ("1 second", 1),
            ("5 seconds", 5),
            ("15 min", 900),
            ("15min", 900),
            ("1 minute", 60),
            ("3 minutes", 180),
            ("2 mins", 120),
            ("5m", 300),
            ("1hr", 3600),
            ("2 hrs", 7200),
            ("1 hour", 3600),
            ("2 hours", 7200),
            ("1h", 3600),
            ("2 days", 172_800),
            ("1 day", 86_400),
            ("1d", 86_400),
            ("1 week", 604_800),
            ("2 weeks", 1_209_600),
            ("1w", 604_800),
            ("1 year", 31_557_600),
            ("2 years", 63_115_200),
            ("1yr", 31_557_600),
            ("1 yrs", 31_557_600),
            ("1y", 31_557_600),
            ("1.5 hours", 5400),
            ("0.5s", 1),
            ("1HR", 3600),
            ("  10   minutes  ", 600),
            ("+1h", 3600),
            ("1h from now", 3600),
        ];
        for (text, seconds) in cases {
            assert_eq!(TimeSpan::parse(text), Ok(TimeSpan::from_seconds(*seconds)), "{text}");
        }
    }

    #[test]
    fn milliseconds_keep_their_precision() {
        assert_eq!(
            TimeSpan::parse("200ms").unwrap().as_positive_duration(),
            Some(Duration::from_millis(200))
        );
        assert_eq!(TimeSpan::parse("1 millisecond").unwrap(), TimeSpan::from_millis(1));
        assert_eq!(TimeSpan::parse("2 msecs").unwrap(), TimeSpan::from_millis(2));
        assert_eq!(
            TimeSpan::parse("0.5s").unwrap(),
            TimeSpan::from_seconds(1),
            "jose rounds seconds"
        );
        assert_eq!(TimeSpan::from_millis(200).to_string(), "200ms");
    }

    #[test]
    fn past_forms_are_negative() {
        assert_eq!(TimeSpan::parse("-1h").unwrap().seconds(), -3600);
        assert_eq!(TimeSpan::parse("1h ago").unwrap().seconds(), -3600);
        assert_eq!(TimeSpan::parse("2 days ago").unwrap().seconds(), -172_800);
        assert!(TimeSpan::parse("- 5 min").unwrap().is_past());
    }

    #[test]
    fn months_junk_and_empty_input_are_refused() {
        assert!(matches!(TimeSpan::parse("3 months"), Err(TimeSpanError::UnknownUnit(u)) if u == "months"));
        assert!(matches!(TimeSpan::parse("1 mo"), Err(TimeSpanError::UnknownUnit(_))));
        assert_eq!(TimeSpan::parse(""), Err(TimeSpanError::Empty));
        for junk in [
            "abc",
            "h",
            "10",
            "1.2.3s",
            ".5s",
            "5.s",
            "1h30m",
            "1 h x",
            "ten minutes",
            "1e3s",
            "--1h",
            "1h ago ago",
        ] {
            assert!(TimeSpan::parse(junk).is_err(), "{junk} should be refused");
        }
        assert!(matches!(
            TimeSpan::parse("99999999999999999999 years"),
            Err(TimeSpanError::TooLarge(_))
        ));
    }

    #[test]
    fn errors_explain_what_is_expected() {
        let message = TimeSpan::parse("3 months").unwrap_err().to_string();
        assert!(message.contains("months"), "{message}");
        let message = TimeSpan::parse("soon").unwrap_err().to_string();
        assert!(message.contains("\"15 min\""), "{message}");
    }

    proptest! {
        #[test]
        fn any_text_parses_to_a_span_or_an_error_without_panicking(text in ".{0,40}", number in "[-+]?[0-9.]{1,400} ?(ms|s|min|h|d|w|y|years)( ago| from now)?") {
            for text in [text, number] {
                if let Ok(span) = TimeSpan::parse(&text) {
                    let _ = (span.seconds(), span.as_positive_duration(), span.to_string());
                }
            }
        }

        #[test]
        fn formatting_then_parsing_round_trips(seconds in -10_000_000_000i64..10_000_000_000i64) {
            let span = TimeSpan::from_seconds(seconds);
            prop_assert_eq!(TimeSpan::parse(&span.to_string()), Ok(span));
        }

        #[test]
        fn milliseconds_round_trip(millis in -10_000_000i64..10_000_000i64) {
            let span = TimeSpan::from_millis(millis);
            prop_assert_eq!(TimeSpan::parse(&span.to_string()), Ok(span));
        }

        #[test]
        fn any_unit_spelling_round_trips(n in 0u32..100_000, unit in prop::sample::select(vec![
            ("s", 1i64), ("seconds", 1), ("min", 60), ("hours", 3600), ("days", 86_400), ("weeks", 604_800),
        ])) {
            let parsed = TimeSpan::parse(&format!("{n} {}", unit.0)).unwrap();
            prop_assert_eq!(parsed.seconds(), i64::from(n) * unit.1);
        }
    }
}
