//! When a bot posts: pure slot logic over a [`Clock`]. A bot's [`Schedule`] (times of day
//! and/or every N hours, jitter, daily cap, quiet hours, time zone) becomes a [`Plan`] that
//! answers "what is the next slot after this moment". Knows nothing of the database or of X;
//! the posting loop in `app::posting` asks it and acts.
//!
//! Jitter is a pure function of the bot and the slot (a hash), not of a random generator's
//! state, so a restarted scheduler plans the very same times.

use std::str::FromStr;

use chrono::{DateTime, Days, NaiveDate, NaiveTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use crate::hash::fnv1a;
use crate::{Error, Result};

/// What time it is; injected so tests can run a day in a moment.
pub trait Clock {
    /// Now.
    fn now(&self) -> DateTime<Utc>;
}

/// The machine's clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A bot's posting schedule as the user writes it (`aviary schedule set`, config `[schedule]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Schedule {
    /// Times of day to post at, "HH:MM" in `timezone`.
    pub slots: Vec<String>,
    /// Also post every this long from midnight ("4h", "90m"); empty: only `slots`.
    pub every: String,
    /// Each slot moves by a random amount up to this much either way ("20m"; "0" for none).
    pub jitter: String,
    /// At most this many posts a day (in `timezone`); 0: no cap.
    pub daily_cap: u32,
    /// No posts in this window, "HH:MM-HH:MM" (may wrap midnight); empty: none.
    pub quiet: String,
    /// IANA time zone name ("Europe/Berlin") the times are in.
    pub timezone: String,
    /// Whether the scheduler posts this bot's queue at all.
    pub enabled: bool,
}

impl Default for Schedule {
    fn default() -> Self {
        Schedule {
            slots: vec!["09:00".into(), "13:00".into(), "18:00".into()],
            every: String::new(),
            jitter: "20m".into(),
            daily_cap: 3,
            quiet: "23:00-07:00".into(),
            timezone: "UTC".into(),
            enabled: true,
        }
    }
}

/// A validated [`Schedule`].
#[derive(Clone, Debug)]
pub struct Plan {
    slots: Vec<NaiveTime>,
    every_secs: Option<u32>,
    jitter_secs: i64,
    daily_cap: u32,
    quiet: Option<(NaiveTime, NaiveTime)>,
    tz: Tz,
    salt: u64,
}

/// "90s", "20m", "4h", "1d", or plain seconds.
pub fn parse_duration(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => (&s[..i], s[i..].trim()),
        None => (s, "s"),
    };
    let n: f64 = num.parse().ok()?;
    let mult = match unit {
        "s" | "sec" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        _ => return None,
    };
    (n >= 0.0 && n.is_finite()).then(|| (n * mult).round() as u64)
}

fn parse_time(s: &str, what: &str) -> Result<NaiveTime> {
    NaiveTime::parse_from_str(s.trim(), "%H:%M").map_err(|_| {
        Error::invalid(
            format!("schedule {what} `{s}` is not a time of day"),
            "write times as HH:MM, e.g. 09:30",
        )
    })
}

impl Schedule {
    /// Checks every field; `salt` (the bot's id) makes each bot's jitter its own.
    pub fn plan(&self, salt: u64) -> Result<Plan> {
        let slots = self
            .slots
            .iter()
            .filter(|s| !s.trim().is_empty())
            .map(|s| parse_time(s, "slot"))
            .collect::<Result<Vec<_>>>()?;
        let bad = |what: &str, v: &str, hint: &str| {
            Error::invalid(
                format!("schedule {what} `{v}` is not valid"),
                hint.to_string(),
            )
        };
        let every_secs = if self.every.trim().is_empty() {
            None
        } else {
            match parse_duration(&self.every) {
                Some(s) if (1..=86400).contains(&s) => Some(s as u32),
                _ => {
                    return Err(bad(
                        "every",
                        &self.every,
                        "write a duration from 1s to 1d, e.g. 4h or 90m",
                    ))
                }
            }
        };
        if slots.is_empty() && every_secs.is_none() {
            return Err(Error::invalid(
                "the schedule has no slots and no `every`",
                "set slots=09:00,18:00 or every=4h",
            ));
        }
        let jitter_secs = parse_duration(&self.jitter)
            .filter(|j| *j <= 12 * 3600)
            .ok_or_else(|| {
                bad(
                    "jitter",
                    &self.jitter,
                    "write a duration up to 12h, e.g. 20m",
                )
            })? as i64;
        let quiet = if self.quiet.trim().is_empty() {
            None
        } else {
            let (a, b) = self.quiet.split_once('-').ok_or_else(|| {
                bad(
                    "quiet",
                    &self.quiet,
                    "write quiet hours as HH:MM-HH:MM, e.g. 23:00-07:00",
                )
            })?;
            Some((parse_time(a, "quiet start")?, parse_time(b, "quiet end")?))
        };
        let tz = Tz::from_str(self.timezone.trim()).map_err(|_| {
            bad(
                "timezone",
                &self.timezone,
                "use an IANA name such as UTC, Europe/Berlin or America/New_York",
            )
        })?;
        Ok(Plan {
            slots,
            every_secs,
            jitter_secs,
            daily_cap: self.daily_cap,
            quiet,
            tz,
            salt,
        })
    }

    /// Sets one field from `key=value` text (`aviary schedule set BOT key=value ...`).
    pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
        let v = value.trim();
        match key {
            "slots" => {
                self.slots = v
                    .split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            }
            "every" => self.every = v.into(),
            "jitter" => self.jitter = v.into(),
            "daily_cap" | "cap" => {
                self.daily_cap = v.parse().map_err(|_| {
                    Error::invalid(
                        format!("daily_cap `{v}` is not a number"),
                        "e.g. daily_cap=3",
                    )
                })?
            }
            "quiet" => self.quiet = v.into(),
            "timezone" | "tz" => self.timezone = v.into(),
            "enabled" => {
                self.enabled = match v {
                    "true" | "yes" | "on" | "1" => true,
                    "false" | "no" | "off" | "0" => false,
                    _ => {
                        return Err(Error::invalid(
                            format!("enabled `{v}` is not true or false"),
                            "e.g. enabled=false to pause posting",
                        ))
                    }
                }
            }
            _ => {
                return Err(Error::invalid(
                    format!("the schedule has no setting `{key}`"),
                    "settings: slots, every, jitter, daily_cap, quiet, timezone, enabled",
                ))
            }
        }
        Ok(())
    }
}

impl Plan {
    /// The time zone.
    pub fn timezone(&self) -> Tz {
        self.tz
    }

    fn quiet_at(&self, t: NaiveTime) -> bool {
        match self.quiet {
            None => false,
            Some((a, b)) if a <= b => t >= a && t < b,
            Some((a, b)) => t >= a || t < b,
        }
    }

    /// The offset of the slot at `base` (a pure function of the bot and the slot).
    fn jitter(&self, base: DateTime<Utc>) -> chrono::Duration {
        if self.jitter_secs == 0 {
            return chrono::Duration::zero();
        }
        let mut key = self.salt.to_le_bytes().to_vec();
        key.extend_from_slice(&base.timestamp().to_le_bytes());
        let span = 2 * self.jitter_secs as u64 + 1;
        chrono::Duration::seconds((fnv1a(&key) % span) as i64 - self.jitter_secs)
    }

    /// The local date `t` falls on.
    pub fn local_date(&self, t: DateTime<Utc>) -> NaiveDate {
        t.with_timezone(&self.tz).date_naive()
    }

    /// The UTC span of local day `day`: [start, end).
    pub fn day_bounds(&self, day: NaiveDate) -> (DateTime<Utc>, DateTime<Utc>) {
        let start = |d: NaiveDate| {
            let midnight = d.and_time(NaiveTime::MIN);
            self.tz
                .from_local_datetime(&midnight)
                .earliest()
                // A zone whose midnight does not exist that day starts it an hour later.
                .or_else(|| {
                    self.tz
                        .from_local_datetime(&(midnight + chrono::Duration::hours(1)))
                        .earliest()
                })
                .map(|t| t.with_timezone(&Utc))
                .expect("a day has a start")
        };
        (start(day), start(day + Days::new(1)))
    }

    /// Base (unjittered) slot times of local day `day` from local time `from_secs` on, in
    /// order, quiet hours left out.
    fn base_slots(&self, day: NaiveDate, from_secs: u32) -> Vec<DateTime<Utc>> {
        let mut times: Vec<NaiveTime> = self
            .slots
            .iter()
            .copied()
            .filter(|t| t.num_seconds_from_midnight() >= from_secs)
            .collect();
        if let Some(n) = self.every_secs {
            let mut s = from_secs.div_ceil(n) * n;
            while s < 86400 {
                times.push(NaiveTime::from_num_seconds_from_midnight_opt(s, 0).expect("< 1 day"));
                s += n;
            }
        }
        times.sort();
        times.dedup();
        times
            .into_iter()
            .filter(|t| !self.quiet_at(*t))
            // A time skipped by a DST change has no slot that day.
            .filter_map(|t| self.tz.from_local_datetime(&day.and_time(t)).earliest())
            .map(|t| t.with_timezone(&Utc))
            .collect()
    }

    /// The slots of local day `day`, jittered, in time order, at most `daily_cap` of them:
    /// what the bot posts that day if its queue never runs dry.
    pub fn day(&self, day: NaiveDate) -> Vec<DateTime<Utc>> {
        let mut v: Vec<_> = self
            .base_slots(day, 0)
            .into_iter()
            .map(|b| b + self.jitter(b))
            .collect();
        v.sort();
        if self.daily_cap > 0 {
            v.truncate(self.daily_cap as usize);
        }
        v
    }

    /// The first slot strictly after `after` on a day where `posted_on(day)` is under the daily
    /// cap; `None` only if none in the coming 8 days (everything quiet).
    pub fn next_slot(
        &self,
        after: DateTime<Utc>,
        posted_on: impl Fn(NaiveDate) -> u32,
    ) -> Option<DateTime<Utc>> {
        let j = chrono::Duration::seconds(self.jitter_secs);
        let from = (after - j).with_timezone(&self.tz);
        let mut best: Option<DateTime<Utc>> = None;
        for d in 0..9u64 {
            let day = from.date_naive() + Days::new(d);
            let (day_start, _) = self.day_bounds(day);
            if best.is_some_and(|b| day_start - j > b) {
                break;
            }
            if self.daily_cap > 0 && posted_on(day) >= self.daily_cap {
                continue;
            }
            let from_secs = if d == 0 {
                from.time().num_seconds_from_midnight()
            } else {
                0
            };
            for base in self.base_slots(day, from_secs) {
                // No later slot can beat the best by more than the jitter.
                if best.is_some_and(|b| base - j > b) {
                    break;
                }
                let t = base + self.jitter(base);
                if t > after && best.is_none_or(|b| t < b) {
                    best = Some(t);
                }
            }
        }
        best
    }
}

/// How long to wait before the `attempt`-th retry (1-based): `base` seconds, doubling each
/// time, at most an hour.
pub fn backoff(attempt: u32, base: u64) -> chrono::Duration {
    let secs = base
        .max(1)
        .saturating_mul(1 << attempt.saturating_sub(1).min(12));
    chrono::Duration::seconds(secs.min(3600) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Datelike;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn sched(kv: &[(&str, &str)]) -> Schedule {
        let mut s = Schedule::default();
        for (k, v) in kv {
            s.set(k, v).unwrap();
        }
        s
    }

    #[test]
    fn a_day_of_slots_has_jitter_within_bounds_and_the_cap() {
        let s = sched(&[
            ("slots", "08:00,12:00,16:00,20:00"),
            ("jitter", "15m"),
            ("daily_cap", "2"),
            ("quiet", "19:00-07:00"),
            ("timezone", "Europe/Berlin"),
        ]);
        let plan = s.plan(7).unwrap();
        let day = NaiveDate::from_ymd_opt(2026, 11, 28).unwrap();
        let slots = plan.day(day);
        // 20:00 is quiet, leaving three; the cap keeps the first two.
        assert_eq!(slots.len(), 2);
        let bases = ["2026-11-28T07:00:00Z", "2026-11-28T11:00:00Z"];
        let mut moved = 0;
        for (t, b) in slots.iter().zip(bases) {
            let d = (*t - utc(b)).num_seconds();
            assert!(d.abs() <= 15 * 60, "{t} is {d} s from {b}");
            moved += (d != 0) as usize;
        }
        assert!(moved >= 1, "jitter moves the slots: {slots:?}");
        // The same bot plans the same times again; another bot other times.
        assert_eq!(plan.day(day), s.plan(7).unwrap().day(day));
        assert_ne!(plan.day(day), s.plan(8).unwrap().day(day));
    }

    #[test]
    fn next_slot_walks_the_day_and_honours_the_cap() {
        let plan = sched(&[
            ("slots", "09:00,13:00,18:00"),
            ("jitter", "0"),
            ("quiet", ""),
        ])
        .plan(1)
        .unwrap();
        let none = |_: NaiveDate| 0;
        let t = |s| plan.next_slot(utc(s), none).unwrap();
        assert_eq!(t("2026-11-28T08:00:00Z"), utc("2026-11-28T09:00:00Z"));
        assert_eq!(t("2026-11-28T09:00:00Z"), utc("2026-11-28T13:00:00Z"));
        assert_eq!(t("2026-11-28T18:30:00Z"), utc("2026-11-29T09:00:00Z"));
        // Today's cap is spent: tomorrow.
        let capped = |d: NaiveDate| if d.day() == 28 { 3 } else { 0 };
        assert_eq!(
            plan.next_slot(utc("2026-11-28T10:00:00Z"), capped),
            Some(utc("2026-11-29T09:00:00Z"))
        );
    }

    #[test]
    fn every_n_hours_skips_quiet_hours_and_wraps_midnight() {
        let plan = sched(&[
            ("slots", ""),
            ("every", "4h"),
            ("jitter", "0"),
            ("quiet", "22:00-06:00"),
            ("daily_cap", "0"),
        ])
        .plan(1)
        .unwrap();
        let day = NaiveDate::from_ymd_opt(2026, 11, 28).unwrap();
        let hours: Vec<u32> = plan.day(day).iter().map(|t| t.hour()).collect();
        assert_eq!(hours, [8, 12, 16, 20]);
        assert_eq!(
            plan.next_slot(utc("2026-11-28T20:00:00Z"), |_| 0),
            Some(utc("2026-11-29T08:00:00Z"))
        );
    }

    #[test]
    fn a_dst_change_keeps_local_times_and_skips_the_missing_hour() {
        let plan = sched(&[
            ("slots", "02:30,09:00,18:00"),
            ("jitter", "0"),
            ("quiet", ""),
            ("daily_cap", "0"),
            ("timezone", "Europe/Berlin"),
        ])
        .plan(1)
        .unwrap();
        let at = |d: u32| {
            let day = NaiveDate::from_ymd_opt(2026, 3, d).unwrap();
            plan.day(day)
                .iter()
                .map(|t| t.to_rfc3339())
                .collect::<Vec<_>>()
        };
        // The day before (CET, UTC+1): local times are an hour ahead of UTC.
        assert_eq!(
            at(28),
            [
                "2026-03-28T01:30:00+00:00",
                "2026-03-28T08:00:00+00:00",
                "2026-03-28T17:00:00+00:00"
            ]
        );
        // 29 March 2026, 02:00 CET becomes 03:00 CEST: 02:30 does not exist that day, and
        // the others are two hours ahead of UTC from then on.
        assert_eq!(
            at(29),
            ["2026-03-29T07:00:00+00:00", "2026-03-29T16:00:00+00:00"]
        );
        assert_eq!(at(30)[0], "2026-03-30T00:30:00+00:00");
    }

    #[test]
    fn bad_settings_are_named() {
        let e = |kv: &[(&str, &str)]| sched(kv).plan(1).unwrap_err().to_string();
        assert!(e(&[("slots", "9am")]).contains("9am"));
        assert!(e(&[("timezone", "Mars/Olympus")]).contains("Mars/Olympus"));
        assert!(e(&[("every", "0")]).contains("every"));
        assert!(e(&[("slots", ""), ("every", "")]).contains("no slots"));
        assert!(Schedule::default().set("colour", "red").is_err());
        assert_eq!(parse_duration("90m"), Some(5400));
        assert_eq!(parse_duration("1.5h"), Some(5400));
        assert_eq!(parse_duration("x"), None);
    }

    #[test]
    fn backoff_doubles_up_to_an_hour() {
        assert_eq!(backoff(1, 30).num_seconds(), 30);
        assert_eq!(backoff(2, 30).num_seconds(), 60);
        assert_eq!(backoff(20, 30).num_seconds(), 3600);
    }
}
