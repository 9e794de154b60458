//! Human durations in policy files: `"90s"`, `"30m"`, `"24h"`, `"14d"`, or combinations (`"1d12h"`).

use time::Duration;

/// Parses a policy duration. Only whole, positive amounts of `s`, `m`, `h`, `d` are accepted.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration".into());
    }
    let mut total: i64 = 0;
    let mut number = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3_600,
            'd' => 86_400,
            _ => {
                return Err(format!(
                    "unexpected {c:?} in duration {text:?}: use s, m, h or d"
                ));
            }
        };
        if number.is_empty() {
            return Err(format!("missing number before {c:?} in duration {text:?}"));
        }
        let n: i64 = number
            .parse()
            .map_err(|_| format!("number too large in {text:?}"))?;
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| format!("duration {text:?} is too large"))?;
        number.clear();
    }
    if !number.is_empty() {
        return Err(format!(
            "missing unit after {number} in duration {text:?}: use s, m, h or d"
        ));
    }
    if total <= 0 {
        return Err(format!("duration {text:?} must be positive"));
    }
    Ok(Duration::seconds(total))
}

/// Formats a duration in the largest exact unit (`"7d"`, `"36h"`, `"90s"`).
pub fn format_duration(d: Duration) -> String {
    let s = d.whole_seconds();
    for (unit, n) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
        if s != 0 && s % n == 0 {
            return format!("{}{unit}", s / n);
        }
    }
    format!("{s}s")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_table() {
        let cases = [
            ("90s", Some(90)),
            ("30m", Some(1_800)),
            ("24h", Some(86_400)),
            ("14d", Some(1_209_600)),
            ("1d12h", Some(129_600)),
            ("0s", None),
            ("", None),
            ("5", None),
            ("h", None),
            ("5w", None),
            ("-5s", None),
            ("99999999999999999999d", None),
        ];
        for (text, want) in cases {
            let got = parse_duration(text).ok().map(|d| d.whole_seconds());
            assert_eq!(got, want, "{text:?}");
        }
    }

    #[test]
    fn formats_in_largest_unit() {
        assert_eq!(format_duration(Duration::days(7)), "7d");
        assert_eq!(format_duration(Duration::hours(36)), "36h");
        assert_eq!(format_duration(Duration::seconds(90)), "90s");
    }
}
