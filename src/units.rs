//! Human sizes and rates: `10M`, `512K`, `1G`, `0`.
//!
//! Suffixes are binary (K = 1024), as aria2 and most transfer tools use them;
//! an optional trailing `B`/`iB` and any letter case are accepted, so `10MiB`,
//! `10mb` and `10M` mean the same.

use std::fmt;
use std::str::FromStr;

/// A byte count (a size, or a rate in bytes per second). `0` often means "unlimited".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub struct ByteSize(pub u64);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid size {input:?}: expected a number with an optional K, M, G or T suffix (like 512K or 10M)")]
pub struct ParseSizeError {
    input: String,
}

impl FromStr for ByteSize {
    type Err = ParseSizeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseSizeError {
            input: s.to_string(),
        };
        let t = s.trim();
        let lower = t.to_ascii_lowercase();
        let body = lower
            .strip_suffix("ib")
            .or_else(|| lower.strip_suffix('b'))
            .unwrap_or(&lower);
        let (digits, mult): (&str, u64) = match body.chars().last() {
            Some('k') => (&body[..body.len() - 1], 1 << 10),
            Some('m') => (&body[..body.len() - 1], 1 << 20),
            Some('g') => (&body[..body.len() - 1], 1 << 30),
            Some('t') => (&body[..body.len() - 1], 1 << 40),
            Some(_) => (body, 1),
            None => return Err(err()),
        };
        let digits = digits.trim();
        if digits.is_empty() {
            return Err(err());
        }
        // Allow a fraction ("1.5G") but compute in integers where possible.
        if let Ok(n) = digits.parse::<u64>() {
            return n.checked_mul(mult).map(ByteSize).ok_or_else(err);
        }
        let f: f64 = digits.parse().map_err(|_| err())?;
        if !f.is_finite() || f < 0.0 {
            return Err(err());
        }
        let v = f * mult as f64;
        if v > u64::MAX as f64 {
            return Err(err());
        }
        Ok(ByteSize(v as u64))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(&str, u64); 4] = [
            ("T", 1 << 40),
            ("G", 1 << 30),
            ("M", 1 << 20),
            ("K", 1 << 10),
        ];
        for (name, mult) in UNITS {
            if self.0 >= mult && self.0.is_multiple_of(mult) {
                return write!(f, "{}{}", self.0 / mult, name);
            }
        }
        write!(f, "{}", self.0)
    }
}

impl serde::Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> serde::Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size such as \"10M\" or a number of bytes")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ByteSize, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// Formats a byte count for people: `1.5 GiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_suffixes() {
        assert_eq!("0".parse::<ByteSize>().unwrap().0, 0);
        assert_eq!("512K".parse::<ByteSize>().unwrap().0, 512 * 1024);
        assert_eq!("10M".parse::<ByteSize>().unwrap().0, 10 << 20);
        assert_eq!("1G".parse::<ByteSize>().unwrap().0, 1 << 30);
        assert_eq!("10MiB".parse::<ByteSize>().unwrap().0, 10 << 20);
        assert_eq!("10mb".parse::<ByteSize>().unwrap().0, 10 << 20);
        assert_eq!("1.5K".parse::<ByteSize>().unwrap().0, 1536);
        assert_eq!("1234".parse::<ByteSize>().unwrap().0, 1234);
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "K", "ten", "-1M", "1X", "99999999999999999999T", "NaN"] {
            assert!(bad.parse::<ByteSize>().is_err(), "{bad} should not parse");
        }
    }

    #[test]
    fn displays_round_trip() {
        for s in ["512K", "10M", "1G", "1234"] {
            assert_eq!(s.parse::<ByteSize>().unwrap().to_string(), s);
        }
    }
}
