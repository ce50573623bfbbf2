//! Per-phase wall times of one operation (a run's admission, its execution,
//! its sandbox set-up), for `debug` logs: `RUST_LOG=kasbah::phases=debug`
//! prints one line per operation with the microseconds between marks. A
//! mark costs one `Instant::now()`; nothing is formatted unless logged.

use std::fmt;
use std::time::Instant;

/// Marks are bounded: an operation has a handful of phases.
const MAX_MARKS: usize = 24;

#[derive(Debug)]
pub struct Phases {
    started: Instant,
    last: Instant,
    marks: Vec<(&'static str, u32)>,
}

impl Default for Phases {
    fn default() -> Self {
        Self::new()
    }
}

impl Phases {
    pub fn new() -> Self {
        let now = Instant::now();
        Phases {
            started: now,
            last: now,
            marks: Vec::with_capacity(MAX_MARKS),
        }
    }

    /// End the phase called `name` (time since the previous mark).
    pub fn mark(&mut self, name: &'static str) {
        self.mark_at(name, Instant::now());
    }

    /// End the phase called `name` at `now` (an instant taken where the
    /// phase ended; not before the previous mark).
    pub fn mark_at(&mut self, name: &'static str, now: Instant) {
        let now = now.max(self.last);
        if self.marks.len() < MAX_MARKS {
            let us = now.duration_since(self.last).as_micros();
            self.marks
                .push((name, u32::try_from(us).unwrap_or(u32::MAX)));
        }
        self.last = now;
    }
}

impl fmt::Display for Phases {
    /// `total=1234us a=10 b=1200 …` (microseconds).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "total={}us",
            self.last.duration_since(self.started).as_micros()
        )?;
        for (name, us) in &self.marks {
            write!(f, " {name}={us}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_are_listed_in_order_and_bounded() {
        let mut p = Phases::new();
        p.mark("a");
        std::thread::sleep(std::time::Duration::from_millis(2));
        p.mark("b");
        for _ in 0..100 {
            p.mark("c");
        }
        let s = p.to_string();
        assert!(s.starts_with("total="), "{s}");
        assert!(s.contains(" a=") && s.contains(" b="), "{s}");
        assert!(s.find(" a=") < s.find(" b="), "{s}");
        assert_eq!(s.matches(" c=").count(), MAX_MARKS - 2, "{s}");
        let b: u32 = s
            .split(" b=")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .and_then(|v| v.parse().ok())
            .expect("b's value");
        assert!(b >= 2_000, "{s}");
    }
}
