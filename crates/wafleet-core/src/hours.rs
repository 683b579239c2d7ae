//! Business hours: when a business's people answer, as a weekly schedule in the business's own
//! time (the time zone is the adapter's concern: this module takes a local weekday and time).
//!
//! Written as clauses separated by `;`, each days then time ranges:
//! `mon-fri 09:00-18:00; sat 10:00-14:00`, `mon,wed 08:00-12:00,14:00-18:00`, `sun 00:00-24:00`.
//! Days are `mon` … `sun` (or their full English names), alone, in lists or in ranges (a range
//! may wrap: `fri-mon`). A time range opens at its start and closes at its end (`24:00`: the end
//! of the day); one that crosses midnight is written as two (`fri 22:00-24:00; sat 00:00-02:00`).

use std::fmt;
use std::str::FromStr;

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
const FULL_DAYS: [&str; 7] = [
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
];

/// A weekly schedule: for each day, Monday first, the minutes of the day it is open,
/// `[start, end)`, sorted and merged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    days: [Vec<(u16, u16)>; 7],
}

impl Schedule {
    /// Whether it is open on `weekday` (0 = Monday … 6 = Sunday) at `minute` of the day
    /// (0 ≤ minute < 1,440).
    pub fn is_open(&self, weekday: u32, minute: u32) -> bool {
        self.days.get(weekday as usize).is_some_and(|ranges| {
            ranges
                .iter()
                .any(|&(s, e)| u32::from(s) <= minute && minute < u32::from(e))
        })
    }
}

/// Why a schedule does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0} (write it like `mon-fri 09:00-18:00; sat 10:00-14:00`)")]
pub struct ScheduleError(String);

fn day(name: &str) -> Result<usize, ScheduleError> {
    let name = name.trim().to_ascii_lowercase();
    DAYS.iter()
        .position(|d| *d == name)
        .or_else(|| FULL_DAYS.iter().position(|d| *d == name))
        .ok_or_else(|| ScheduleError(format!("{name:?} is not a day")))
}

fn minute(t: &str) -> Result<u16, ScheduleError> {
    let bad = || ScheduleError(format!("{t:?} is not a time of day (HH:MM)"));
    let (h, m) = t.trim().split_once(':').ok_or_else(bad)?;
    if h.is_empty() || h.len() > 2 || m.len() != 2 {
        return Err(bad());
    }
    let (h, m): (u16, u16) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if m >= 60 || h > 24 || (h == 24 && m != 0) {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

impl FromStr for Schedule {
    type Err = ScheduleError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut days: [Vec<(u16, u16)>; 7] = Default::default();
        let mut clauses = 0;
        for clause in text.split(';').map(str::trim).filter(|c| !c.is_empty()) {
            clauses += 1;
            let (day_spec, ranges) = clause
                .split_once(char::is_whitespace)
                .ok_or_else(|| ScheduleError(format!("{clause:?} needs days and then hours")))?;
            let mut which = Vec::new();
            for item in day_spec.split(',') {
                match item.split_once('-') {
                    Some((a, b)) => {
                        let (a, b) = (day(a)?, day(b)?);
                        let mut d = a;
                        loop {
                            which.push(d);
                            if d == b {
                                break;
                            }
                            d = (d + 1) % 7;
                        }
                    }
                    None => which.push(day(item)?),
                }
            }
            for range in ranges.split(',').map(str::trim) {
                let (s, e) = range.split_once('-').ok_or_else(|| {
                    ScheduleError(format!("{range:?} is not a time range (HH:MM-HH:MM)"))
                })?;
                let (s, e) = (minute(s)?, minute(e)?);
                if s >= e {
                    return Err(ScheduleError(format!(
                        "{range:?} closes before it opens (one that crosses midnight is two: \
                         `fri 22:00-24:00; sat 00:00-02:00`)"
                    )));
                }
                for &d in &which {
                    days[d].push((s, e));
                }
            }
        }
        if clauses == 0 {
            return Err(ScheduleError("the schedule is empty".into()));
        }
        for ranges in &mut days {
            ranges.sort_unstable();
            let mut merged: Vec<(u16, u16)> = Vec::with_capacity(ranges.len());
            for &(s, e) in ranges.iter() {
                match merged.last_mut() {
                    Some(last) if s <= last.1 => last.1 = last.1.max(e),
                    _ => merged.push((s, e)),
                }
            }
            *ranges = merged;
        }
        Ok(Self { days })
    }
}

impl fmt::Display for Schedule {
    /// The canonical form: one clause per day that opens, `mon 09:00-18:00; tue …`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hhmm = |m: u16| format!("{:02}:{:02}", m / 60, m % 60);
        let clauses: Vec<String> = self
            .days
            .iter()
            .enumerate()
            .filter(|(_, r)| !r.is_empty())
            .map(|(d, ranges)| {
                let ranges: Vec<String> = ranges
                    .iter()
                    .map(|&(s, e)| format!("{}-{}", hhmm(s), hhmm(e)))
                    .collect();
                format!("{} {}", DAYS[d], ranges.join(","))
            })
            .collect();
        f.write_str(&clauses.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(h: u32, m: u32) -> u32 {
        h * 60 + m
    }

    #[test]
    fn a_schedule_opens_at_its_start_and_closes_at_its_end() {
        let s: Schedule = "mon-fri 09:00-13:00,15:00-19:00; sat 10:00-14:00"
            .parse()
            .unwrap();
        assert!(!s.is_open(0, at(8, 59)));
        assert!(s.is_open(0, at(9, 0)));
        assert!(s.is_open(4, at(12, 59)));
        assert!(!s.is_open(4, at(13, 0)), "lunch");
        assert!(s.is_open(2, at(18, 59)));
        assert!(!s.is_open(2, at(19, 0)));
        assert!(s.is_open(5, at(10, 0)));
        assert!(!s.is_open(5, at(14, 0)));
        assert!(!s.is_open(6, at(12, 0)), "closed on Sunday");
    }

    #[test]
    fn days_come_in_lists_ranges_wrapping_ranges_and_full_names() {
        let s: Schedule = "Friday-MON 20:00-24:00; wed,thu 00:00-01:00"
            .parse()
            .unwrap();
        for d in [4, 5, 6, 0] {
            assert!(s.is_open(d, at(23, 59)), "day {d}");
        }
        assert!(!s.is_open(1, at(23, 0)));
        assert!(s.is_open(2, at(0, 30)) && s.is_open(3, at(0, 30)));
        assert_eq!(
            s.to_string(),
            "mon 20:00-24:00; wed 00:00-01:00; thu 00:00-01:00; fri 20:00-24:00; \
             sat 20:00-24:00; sun 20:00-24:00"
        );
        // Overlapping ranges merge; the canonical form parses back to the same schedule.
        let s: Schedule = "mon 09:00-12:00, 11:00-13:00; mon 13:00-14:00"
            .parse()
            .unwrap();
        assert_eq!(s.to_string(), "mon 09:00-14:00");
        assert_eq!(s.to_string().parse::<Schedule>().unwrap(), s);
    }

    #[test]
    fn a_schedule_that_does_not_parse_says_why() {
        for (bad, why) in [
            ("", "empty"),
            ("mon-fri", "needs days and then hours"),
            ("mo 09:00-18:00", "not a day"),
            ("mon 9-18", "not a time of day"),
            ("mon 09:00", "not a time range"),
            ("mon 09:00-25:00", "not a time of day"),
            ("mon 09:60-10:00", "not a time of day"),
            ("mon 22:00-02:00", "closes before it opens"),
            ("mon 10:00-10:00", "closes before it opens"),
        ] {
            let e = bad.parse::<Schedule>().unwrap_err().to_string();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }
}
