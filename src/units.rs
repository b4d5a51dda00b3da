//! Human-readable sizes (`"8MiB"`, `"512KB"`, `1048576`) and durations (`"7d"`, `"500ms"`,
//! `"1h30m"`) for the config file and the command line. `"none"` (also `"off"`, `"unlimited"`,
//! `"forever"`) and `0` mean "no limit" where a limit is optional.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

const NO_LIMIT: [&str; 4] = ["none", "off", "unlimited", "forever"];

/// A setting that cannot be used: the key (e.g. `mqtt.max_inflight`) and what is wrong with it.
/// Every config section's `validate` returns it, so a message always names the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {problem}")]
pub struct BadSetting {
    pub key: String,
    pub problem: String,
}

impl BadSetting {
    pub fn new(key: impl Into<String>, problem: impl fmt::Display) -> Self {
        BadSetting {
            key: key.into(),
            problem: problem.to_string(),
        }
    }

    /// The same problem under a longer key (`prefix.key`).
    pub fn under(self, prefix: &str) -> Self {
        BadSetting {
            key: format!("{prefix}.{}", self.key),
            problem: self.problem,
        }
    }
}

/// Why a size or a duration did not parse; `text` is what was given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    #[error("{text:?} is not a size: unknown unit {unit:?} (use B, KB, MB, GB, KiB, MiB, GiB)")]
    SizeUnit { text: String, unit: String },
    #[error("{text:?} is not a size: no number")]
    SizeNumber { text: String },
    #[error("empty duration")]
    EmptyDuration,
    #[error("{text:?} is not a duration (e.g. \"500ms\", \"30s\", \"7d\")")]
    Duration { text: String },
    #[error("{text:?} is not a duration: number {number} has no unit")]
    NoUnit { text: String, number: u128 },
    #[error("{text:?} is not a duration: unknown unit {unit:?} (use ms, s, m, h, d, w)")]
    DurationUnit { text: String, unit: String },
    #[error("{text:?} is out of range")]
    OutOfRange { text: String },
}

/// A number of bytes. Accepts `B`, `KB`/`MB`/`GB`/`TB` (powers of 1000) and `KiB`/`MiB`/`GiB`/`TiB`
/// (powers of 1024), case-insensitive, with or without a space; a bare number is bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub const fn bytes(self) -> u64 {
        self.0
    }
    pub const fn mib(n: u64) -> Self {
        ByteSize(n * 1024 * 1024)
    }
    pub const fn kib(n: u64) -> Self {
        ByteSize(n * 1024)
    }
    /// `None` for zero ("no limit").
    pub fn limit(self) -> Option<u64> {
        (self.0 > 0).then_some(self.0)
    }
}

impl FromStr for ByteSize {
    type Err = UnitError;
    fn from_str(s: &str) -> Result<Self, UnitError> {
        let t = s.trim();
        if NO_LIMIT.contains(&t.to_ascii_lowercase().as_str()) {
            return Ok(ByteSize(0));
        }
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let unit = unit.trim().to_ascii_lowercase();
        let mult: u64 = match unit.as_str() {
            "" | "b" => 1,
            "k" | "kb" => 1_000,
            "m" | "mb" => 1_000_000,
            "g" | "gb" => 1_000_000_000,
            "t" | "tb" => 1_000_000_000_000,
            "kib" => 1 << 10,
            "mib" => 1 << 20,
            "gib" => 1 << 30,
            "tib" => 1 << 40,
            _ => {
                return Err(UnitError::SizeUnit {
                    text: s.into(),
                    unit,
                });
            }
        };
        if num.is_empty() {
            return Err(UnitError::SizeNumber { text: s.into() });
        }
        let value: f64 = num
            .parse()
            .map_err(|_| UnitError::SizeNumber { text: s.into() })?;
        let bytes = value * mult as f64;
        if !(0.0..1.8e19).contains(&bytes) {
            return Err(UnitError::OutOfRange { text: s.into() });
        }
        // Checked above to be in range; a float to integer `as` saturates anyway.
        #[allow(clippy::cast_possible_truncation)]
        let bytes = bytes.round() as u64;
        Ok(ByteSize(bytes))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        for (unit, size) in [
            ("TiB", 1u64 << 40),
            ("GiB", 1 << 30),
            ("MiB", 1 << 20),
            ("KiB", 1 << 10),
        ] {
            if b >= size && b % size == 0 {
                return write!(f, "{}{unit}", b / size);
            }
        }
        write!(f, "{b}B")
    }
}

/// A span of time. Accepts `ms`, `s`, `m`, `h`, `d`, `w`, combined (`"1h30m"`); a bare number is
/// seconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    pub const fn secs(s: u64) -> Self {
        HumanDuration(Duration::from_secs(s))
    }
    pub const fn millis(ms: u64) -> Self {
        HumanDuration(Duration::from_millis(ms))
    }
    pub fn as_millis(self) -> u64 {
        self.0.as_millis().min(u128::from(u64::MAX)).sat_u64()
    }
    /// `None` for zero ("no limit").
    pub fn limit(self) -> Option<Duration> {
        (!self.0.is_zero()).then_some(self.0)
    }
}

impl FromStr for HumanDuration {
    type Err = UnitError;
    fn from_str(s: &str) -> Result<Self, UnitError> {
        let t = s.trim().to_ascii_lowercase();
        if NO_LIMIT.contains(&t.as_str()) {
            return Ok(HumanDuration(Duration::ZERO));
        }
        if t.is_empty() {
            return Err(UnitError::EmptyDuration);
        }
        if let Ok(secs) = t.parse::<u64>() {
            return Ok(HumanDuration(Duration::from_secs(secs)));
        }
        let mut total_ms: u128 = 0;
        let mut rest = t.as_str();
        while !rest.is_empty() {
            let digits = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            if digits == 0 {
                return Err(UnitError::Duration { text: s.into() });
            }
            let n: u128 = rest[..digits]
                .parse()
                .map_err(|_| UnitError::Duration { text: s.into() })?;
            rest = &rest[digits..];
            let unit_len = rest
                .find(|c: char| c.is_ascii_digit())
                .unwrap_or(rest.len());
            let unit = rest[..unit_len].trim();
            rest = &rest[unit_len..];
            let ms: u128 = match unit {
                "ms" => 1,
                "s" | "sec" | "secs" => 1_000,
                "m" | "min" | "mins" => 60_000,
                "h" | "hr" | "hrs" => 3_600_000,
                "d" | "day" | "days" => 86_400_000,
                "w" | "week" | "weeks" => 604_800_000,
                "" => {
                    return Err(UnitError::NoUnit {
                        text: s.into(),
                        number: n,
                    });
                }
                _ => {
                    return Err(UnitError::DurationUnit {
                        text: s.into(),
                        unit: unit.into(),
                    });
                }
            };
            let range = || UnitError::OutOfRange { text: s.into() };
            total_ms = total_ms
                .checked_add(n.checked_mul(ms).ok_or_else(range)?)
                .ok_or_else(range)?;
        }
        if total_ms > u128::from(u64::MAX) {
            return Err(UnitError::OutOfRange { text: s.into() });
        }
        Ok(HumanDuration(Duration::from_millis(total_ms.sat_u64())))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.as_millis();
        if ms == 0 {
            return write!(f, "0s");
        }
        for (unit, size) in [
            ("w", 604_800_000u64),
            ("d", 86_400_000),
            ("h", 3_600_000),
            ("m", 60_000),
            ("s", 1_000),
        ] {
            if ms % size == 0 {
                return write!(f, "{}{unit}", ms / size);
            }
        }
        write!(f, "{ms}ms")
    }
}

macro_rules! serde_via_str {
    ($t:ty, $what:literal, $from_int:expr) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl serde::de::Visitor<'_> for V {
                    type Value = $t;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($what)
                    }
                    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<$t, E> {
                        v.parse().map_err(E::custom)
                    }
                    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<$t, E> {
                        Ok($from_int(v))
                    }
                    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<$t, E> {
                        u64::try_from(v)
                            .map($from_int)
                            .map_err(|_| E::custom(format!("{v} is negative")))
                    }
                }
                d.deserialize_any(V)
            }
        }
    };
}

serde_via_str!(
    ByteSize,
    "a size such as \"8MiB\" or a number of bytes",
    ByteSize
);
serde_via_str!(
    HumanDuration,
    "a duration such as \"500ms\", \"7d\" or a number of seconds",
    HumanDuration::secs
);

/// Narrowing conversions that saturate at the target type's maximum instead of wrapping: the
/// `as` casts they replace truncated silently, and on 32-bit ARM a `u64` file size or a `usize`
/// length past 4 GiB would wrap. For non-negative values (every use narrows a size, a count, an
/// offset delta or a duration).
pub trait Narrow: Copy {
    fn sat_u8(self) -> u8;
    fn sat_u16(self) -> u16;
    fn sat_u32(self) -> u32;
    fn sat_u64(self) -> u64;
    fn sat_usize(self) -> usize;
    fn sat_i32(self) -> i32;
    fn sat_i64(self) -> i64;
}

macro_rules! narrow {
    ($($t:ty),*) => {$(
        impl Narrow for $t {
            fn sat_u8(self) -> u8 {
                u8::try_from(self).unwrap_or(u8::MAX)
            }
            fn sat_u16(self) -> u16 {
                u16::try_from(self).unwrap_or(u16::MAX)
            }
            fn sat_u32(self) -> u32 {
                u32::try_from(self).unwrap_or(u32::MAX)
            }
            fn sat_u64(self) -> u64 {
                u64::try_from(self).unwrap_or(u64::MAX)
            }
            fn sat_usize(self) -> usize {
                usize::try_from(self).unwrap_or(usize::MAX)
            }
            fn sat_i32(self) -> i32 {
                i32::try_from(self).unwrap_or(i32::MAX)
            }
            fn sat_i64(self) -> i64 {
                i64::try_from(self).unwrap_or(i64::MAX)
            }
        }
    )*};
}

narrow!(u16, u32, u64, u128, usize);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!("8MiB".parse::<ByteSize>(), Ok(ByteSize(8 << 20)));
        assert_eq!("8 mib".parse::<ByteSize>(), Ok(ByteSize(8 << 20)));
        assert_eq!("1.5KiB".parse::<ByteSize>(), Ok(ByteSize(1536)));
        assert_eq!("2GB".parse::<ByteSize>(), Ok(ByteSize(2_000_000_000)));
        assert_eq!("none".parse::<ByteSize>(), Ok(ByteSize(0)));
        assert_eq!("4096".parse::<ByteSize>(), Ok(ByteSize(4096)));
        assert!("8 parsecs".parse::<ByteSize>().is_err());
        assert!("MiB".parse::<ByteSize>().is_err());
        assert_eq!(ByteSize(8 << 20).to_string(), "8MiB");
        assert_eq!(ByteSize(1000).to_string(), "1000B");
    }

    #[test]
    fn durations() {
        let d = |s: &str| s.parse::<HumanDuration>().map(|d| d.as_millis());
        assert_eq!(d("500ms"), Ok(500));
        assert_eq!(d("7d"), Ok(7 * 86_400_000));
        assert_eq!(d("1h30m"), Ok(5_400_000));
        assert_eq!(d("30"), Ok(30_000));
        assert_eq!(d("off"), Ok(0));
        assert!(d("7 fortnights").is_err());
        assert!(d("h").is_err());
        assert_eq!(HumanDuration::secs(7 * 86_400).to_string(), "1w");
        assert_eq!(HumanDuration::millis(1500).to_string(), "1500ms");
    }

    #[test]
    fn serde_round_trip() {
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct T {
            a: ByteSize,
            b: HumanDuration,
        }
        let t: T = toml::from_str("a = \"8MiB\"\nb = \"7d\"").expect("parses");
        assert_eq!(t.a, ByteSize(8 << 20));
        let s = toml::to_string(&t).expect("serializes");
        assert_eq!(toml::from_str::<T>(&s).expect("parses back"), t);
        let n: T = toml::from_str("a = 10\nb = 2").expect("parses");
        assert_eq!(n.b.as_millis(), 2000);
    }
}
