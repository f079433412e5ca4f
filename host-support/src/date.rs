//! UTC calendar text for fixed timestamps (SOURCE_DATE_EPOCH style: no clock
//! is ever read), through the `time` crate.

use time::OffsetDateTime;

const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// The UTC date and time `epoch` seconds after 1970-01-01. Panics only for
/// instants past the year 9999, which no pinned timestamp is.
pub fn utc(epoch: u64) -> OffsetDateTime {
    i64::try_from(epoch)
        .ok()
        .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
        .expect("timestamp within the years 1970-9999")
}

/// The UTC year of `epoch`.
pub fn year(epoch: u64) -> i32 {
    utc(epoch).year()
}

/// The fields every format below is made of.
struct Parts {
    year: i32,
    month: u8,
    day: u8,
    hms: String,
    day_name: &'static str,
    month_name: &'static str,
}

fn parts(epoch: u64) -> Parts {
    let t = utc(epoch);
    Parts {
        year: t.year(),
        month: u8::from(t.month()),
        day: t.day(),
        hms: format!("{:02}:{:02}:{:02}", t.hour(), t.minute(), t.second()),
        day_name: DAYS[t.weekday().number_days_from_sunday() as usize],
        month_name: MONTHS[u8::from(t.month()) as usize - 1],
    }
}

/// `2025-01-01T00:00:00Z` (RFC 3339, as SPDX `created` wants it).
pub fn rfc3339(epoch: u64) -> String {
    let p = parts(epoch);
    format!("{:04}-{:02}-{:02}T{}Z", p.year, p.month, p.day, p.hms)
}

/// `Wed, 01 Jan 2025 00:00:00 +0000` (RFC 2822, as a Debian changelog
/// trailer wants it).
pub fn rfc2822(epoch: u64) -> String {
    let p = parts(epoch);
    format!(
        "{}, {:02} {} {:04} {} +0000",
        p.day_name, p.day, p.month_name, p.year, p.hms
    )
}

/// `Thu Jan  1 00:00:00 UTC 1970`, as `date -u` prints it (kbuild's
/// KBUILD_BUILD_TIMESTAMP).
pub fn date_utc(epoch: u64) -> String {
    let p = parts(epoch);
    format!(
        "{} {} {:>2} {} UTC {}",
        p.day_name, p.month_name, p.day, p.hms, p.year
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_735_689_600), "2025-01-01T00:00:00Z");
        assert_eq!(rfc2822(1_735_689_600), "Wed, 01 Jan 2025 00:00:00 +0000");
        // A leap day, mid-day.
        assert_eq!(rfc3339(951_827_696), "2000-02-29T12:34:56Z");
        assert_eq!(rfc2822(951_827_696), "Tue, 29 Feb 2000 12:34:56 +0000");
        assert_eq!(date_utc(0), "Thu Jan  1 00:00:00 UTC 1970");
        assert_eq!(date_utc(1_709_210_096), "Thu Feb 29 12:34:56 UTC 2024");
        // Right after a 400-year leap day.
        assert_eq!(date_utc(951_868_800), "Wed Mar  1 00:00:00 UTC 2000");
        assert_eq!(year(1_735_689_599), 2024);
    }
}
