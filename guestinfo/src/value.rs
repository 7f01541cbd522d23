//! Go value encodings (guestinfo.md §5) and the serde adapters the schema uses for byte-ish
//! values (`[]byte`, `net.IP`) so that the VIC codec sees bytes while JSON sees readable text.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::ser::{SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};

/// `strconv.FormatFloat(v, 'E', -1, 64)`: shortest round-trip digits, `E`, signed exponent of at
/// least two digits (`3.14` ⇒ `3.14E+00`).
pub fn format_go_float(v: f64) -> String {
    if v.is_nan() {
        return "NaN".to_owned();
    }
    if v.is_infinite() {
        return if v > 0.0 { "+Inf" } else { "-Inf" }.to_owned();
    }
    let rust = format!("{v:E}");
    let (mantissa, exp) = rust.split_once('E').unwrap_or((rust.as_str(), "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let sign = if exp < 0 { '-' } else { '+' };
    format!("{mantissa}E{sign}{:02}", exp.unsigned_abs())
}

/// `strconv.ParseBool`.
pub fn parse_go_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// `base64.StdEncoding` (padded).
pub fn b64_encode(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// `base64.StdEncoding.DecodeString`.
pub fn b64_decode(s: &str) -> Result<Vec<u8>, base64::DecodeError> {
    STANDARD.decode(s)
}

/// A Go `net.IP` value from its raw bytes. The byte length is kept in the address family: a
/// 16-byte IPv4-in-IPv6 value stays an [`IpAddr::V6`] (`::ffff:a.b.c.d`) so that it re-encodes
/// as 16 bytes; use [`IpAddr::to_canonical`] to get the IPv4 address.
pub fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    if let Ok(b) = <[u8; 4]>::try_from(bytes) {
        return Some(IpAddr::V4(Ipv4Addr::from(b)));
    }
    <[u8; 16]>::try_from(bytes)
        .ok()
        .map(|b| IpAddr::V6(Ipv6Addr::from(b)))
}

fn ip_bytes(ip: &IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

/// An IP serialized as bytes for the VIC codec and as text for human-readable formats.
struct IpRef<'a>(&'a IpAddr);

impl Serialize for IpRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self.0)
        } else {
            s.serialize_bytes(&ip_bytes(self.0))
        }
    }
}

struct IpOwned(IpAddr);

impl<'de> Deserialize<'de> for IpOwned {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = IpOwned;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an IP address (4 or 16 bytes, or text)")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<IpOwned, E> {
                v.parse()
                    .map(IpOwned)
                    .map_err(|_| E::custom(format!("invalid IP address {v:?}")))
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<IpOwned, E> {
                ip_from_bytes(v).map(IpOwned).ok_or_else(|| {
                    E::custom(format!("an IP must be 4 or 16 bytes, got {}", v.len()))
                })
            }
        }
        if d.is_human_readable() {
            d.deserialize_str(V)
        } else {
            d.deserialize_bytes(V)
        }
    }
}

/// Serde adapter for a Go `net.IP` field (`Option<IpAddr>`; `None` = nil IP, never written).
pub mod ip_opt {
    use super::*;

    /// Serializes the field (serde's `with` protocol).
    pub fn serialize<S: Serializer>(ip: &Option<IpAddr>, s: S) -> Result<S::Ok, S::Error> {
        match ip {
            Some(ip) => s.serialize_some(&IpRef(ip)),
            None => s.serialize_none(),
        }
    }

    /// Deserializes the field (serde's `with` protocol).
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<IpAddr>, D::Error> {
        Ok(Option::<IpOwned>::deserialize(d)?.map(|ip| ip.0))
    }
}

/// Serde adapter for a Go `[]net.IP` field (elements at `key|i`).
pub mod ip_vec {
    use super::*;

    /// Serializes the field (serde's `with` protocol).
    pub fn serialize<S: Serializer>(ips: &[IpAddr], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(ips.len()))?;
        for ip in ips {
            seq.serialize_element(&IpRef(ip))?;
        }
        seq.end()
    }

    /// Deserializes the field (serde's `with` protocol).
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpAddr>, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Vec<IpAddr>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of IP addresses")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<IpAddr>, A::Error> {
                let mut out = Vec::new();
                while let Some(IpOwned(ip)) = seq.next_element()? {
                    out.push(ip);
                }
                Ok(out)
            }
        }
        d.deserialize_seq(V)
    }
}

/// Serde adapter for a Go `[]byte` field: raw bytes for the VIC codec (which base64-encodes
/// them), base64 text for human-readable formats.
pub mod bytes_b64 {
    use super::*;

    /// Serializes the field (serde's `with` protocol).
    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&b64_encode(bytes))
        } else {
            s.serialize_bytes(bytes)
        }
    }

    /// Deserializes the field (serde's `with` protocol).
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("bytes or base64 text")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<u8>, E> {
                b64_decode(v).map_err(|e| E::custom(format!("invalid base64: {e}")))
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
        }
        if d.is_human_readable() {
            d.deserialize_str(V)
        } else {
            d.deserialize_byte_buf(V)
        }
    }
}

/// A Go `time.Time` as the original transmits it: `Time.String()` with the layout
/// `2006-01-02 15:04:05.999999999 -0700 MST`. Unparseable text decodes as the zero time, like
/// the original (which logs and carries on).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GoTime {
    /// The year (any, as Go's).
    pub year: i64,
    /// 1 to 12.
    pub month: u8,
    /// 1 to 31.
    pub day: u8,
    /// 0 to 23.
    pub hour: u8,
    /// 0 to 59.
    pub minute: u8,
    /// 0 to 59.
    pub second: u8,
    /// 0 to 999 999 999.
    pub nanosecond: u32,
    /// Offset east of UTC in seconds.
    pub offset_seconds: i32,
    /// Zone abbreviation; empty prints the numeric offset, as Go does.
    pub zone: String,
}

impl Default for GoTime {
    /// Go's zero `time.Time`: `0001-01-01 00:00:00 +0000 UTC`.
    fn default() -> GoTime {
        GoTime {
            year: 1,
            month: 1,
            day: 1,
            hour: 0,
            minute: 0,
            second: 0,
            nanosecond: 0,
            offset_seconds: 0,
            zone: "UTC".to_owned(),
        }
    }
}

fn is_leap(y: i64) -> bool {
    y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)
}

fn days_in_month(y: i64, m: u8) -> u8 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

// Howard Hinnant's civil-from-days / days-from-civil, in proleptic Gregorian days since
// 1970-01-01.
fn civil_from_days(z: i64) -> (i64, u8, u8) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    // 1..=12 and 1..=31 by construction.
    (y, small(m), small(d))
}

/// A calendar field known to be small (a month, a day, an hour...) as a `u8`.
fn small(v: i64) -> u8 {
    u8::try_from(v).unwrap_or(0)
}

fn days_from_civil(y: i64, m: u8, d: u8) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

impl GoTime {
    /// A UTC time from seconds and nanoseconds since the Unix epoch.
    pub fn from_unix(secs: i64, nanos: u32) -> GoTime {
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400);
        let (year, month, day) = civil_from_days(days);
        GoTime {
            year,
            month,
            day,
            // `rem` is in 0..86_400.
            hour: small(rem / 3600),
            minute: small(rem % 3600 / 60),
            second: small(rem % 60),
            nanosecond: nanos.min(999_999_999),
            offset_seconds: 0,
            zone: "UTC".to_owned(),
        }
    }

    /// Seconds since the Unix epoch (the offset applied).
    pub fn unix_seconds(&self) -> i64 {
        let days = days_from_civil(self.year, self.month, self.day);
        days * 86_400
            + i64::from(self.hour) * 3600
            + i64::from(self.minute) * 60
            + i64::from(self.second)
            - i64::from(self.offset_seconds)
    }

    /// Parses the `Time.String()` form; `None` where Go's `time.Parse` would fail.
    pub fn parse(s: &str) -> Option<GoTime> {
        fn num(s: &str, digits: usize) -> Option<(u32, &str)> {
            let head = s.get(..digits)?;
            if !head.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            Some((head.parse().ok()?, s.get(digits..)?))
        }
        fn lit<'a>(s: &'a str, l: &str) -> Option<&'a str> {
            s.strip_prefix(l)
        }
        let (year, s) = num(s, 4)?;
        let s = lit(s, "-")?;
        let (month, s) = num(s, 2)?;
        let s = lit(s, "-")?;
        let (day, s) = num(s, 2)?;
        let s = lit(s, " ")?;
        // Go's "15" accepts one or two digits.
        let (hour, s) = num(s, 2).or_else(|| num(s, 1))?;
        let s = lit(s, ":")?;
        let (minute, s) = num(s, 2)?;
        let s = lit(s, ":")?;
        let (second, mut s) = num(s, 2)?;
        let mut nanosecond = 0u32;
        if let Some(rest) = s.strip_prefix(['.', ',']) {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 || digits > 9 {
                return None;
            }
            let (frac, rest) = rest.split_at(digits);
            let scale = 10u32.pow(9 - u32::try_from(digits).ok()?);
            nanosecond = frac.parse::<u32>().ok()?.checked_mul(scale)?;
            s = rest;
        }
        let s = lit(s, " ")?;
        let (sign, s) = match s.get(..1)? {
            "+" => (1i32, s.get(1..)?),
            "-" => (-1i32, s.get(1..)?),
            _ => return None,
        };
        let (oh, s) = num(s, 2)?;
        let (om, s) = num(s, 2)?;
        let zone = lit(s, " ")?;
        let zone_ok = (3..=5).contains(&zone.len())
            && zone.bytes().all(|b| b.is_ascii_alphabetic())
            && zone.bytes().next().is_some_and(|b| b.is_ascii_uppercase());
        if !zone_ok || !(1..=12).contains(&month) || hour > 23 || minute > 59 || second > 59 {
            return None;
        }
        let month = u8::try_from(month).ok()?;
        if day == 0 || day > u32::from(days_in_month(i64::from(year), month)) || om > 59 {
            return None;
        }
        Some(GoTime {
            year: i64::from(year),
            month,
            day: u8::try_from(day).ok()?,
            hour: u8::try_from(hour).ok()?,
            minute: u8::try_from(minute).ok()?,
            second: u8::try_from(second).ok()?,
            nanosecond,
            offset_seconds: sign * (i32::try_from(oh).ok()? * 3600 + i32::try_from(om).ok()? * 60),
            zone: zone.to_owned(),
        })
    }

    /// Parses like [`GoTime::parse`], falling back to the zero time like the original decoder.
    pub fn parse_lenient(s: &str) -> GoTime {
        GoTime::parse(s).unwrap_or_default()
    }
}

impl fmt::Display for GoTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.year < 0 {
            write!(f, "-{:04}", self.year.unsigned_abs())?;
        } else {
            write!(f, "{:04}", self.year)?;
        }
        write!(
            f,
            "-{:02}-{:02} {:02}:{:02}:{:02}",
            self.month, self.day, self.hour, self.minute, self.second
        )?;
        if self.nanosecond != 0 {
            let frac = format!("{:09}", self.nanosecond);
            write!(f, ".{}", frac.trim_end_matches('0'))?;
        }
        let minutes = self.offset_seconds / 60;
        let sign = if minutes < 0 { '-' } else { '+' };
        let m = minutes.unsigned_abs();
        let numeric = format!("{sign}{:02}{:02}", m / 60, m % 60);
        if self.zone.is_empty() {
            write!(f, " {numeric} {numeric}")
        } else {
            write!(f, " {numeric} {}", self.zone)
        }
    }
}

impl Serialize for GoTime {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for GoTime {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<GoTime, D::Error> {
        let s = String::deserialize(d)?;
        Ok(GoTime::parse_lenient(&s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::approx_constant)] // the spec's value, verbatim
    fn go_floats() {
        assert_eq!(format_go_float(3.14), "3.14E+00");
        assert_eq!(format_go_float(0.0), "0E+00");
        assert_eq!(format_go_float(-0.0), "-0E+00");
        assert_eq!(format_go_float(1e-7), "1E-07");
        assert_eq!(format_go_float(1.5e300), "1.5E+300");
        assert_eq!(format_go_float(123456.0), "1.23456E+05");
        assert_eq!(format_go_float(f64::NAN), "NaN");
        assert_eq!(format_go_float(f64::INFINITY), "+Inf");
        assert_eq!(format_go_float(f64::NEG_INFINITY), "-Inf");
        assert_eq!("3.14E+00".parse::<f64>().ok(), Some(3.14));
    }

    #[test]
    fn go_bools() {
        assert_eq!(parse_go_bool("True"), Some(true));
        assert_eq!(parse_go_bool("0"), Some(false));
        assert_eq!(parse_go_bool("yes"), None);
    }

    #[test]
    fn ips_keep_their_length() {
        assert_eq!(b64_decode("rBAAAg==").ok(), Some(vec![172, 16, 0, 2]));
        let v4 = b64_decode("rBAAAg==").ok().and_then(|b| ip_from_bytes(&b));
        assert_eq!(
            v4,
            Some(
                "172.16.0.2"
                    .parse()
                    .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
            )
        );
        let mapped = b64_decode("AAAAAAAAAAAAAP//CgAAAQ==")
            .ok()
            .and_then(|b| ip_from_bytes(&b));
        let Some(mapped) = mapped else {
            panic!("16-byte IP rejected")
        };
        assert!(mapped.is_ipv6());
        assert_eq!(mapped.to_canonical().to_string(), "10.0.0.1");
        assert_eq!(b64_encode(&ip_bytes(&mapped)), "AAAAAAAAAAAAAP//CgAAAQ==");
        assert_eq!(ip_from_bytes(&[1, 2, 3]), None);
    }

    #[test]
    fn go_time() {
        let t = GoTime::parse("2009-11-10 23:00:00 +0000 UTC");
        assert_eq!(t, Some(GoTime::from_unix(1_257_894_000, 0)));
        let t = GoTime::from_unix(1_257_894_000, 500_000_000);
        assert_eq!(t.to_string(), "2009-11-10 23:00:00.5 +0000 UTC");
        assert_eq!(t.unix_seconds(), 1_257_894_000);
        assert_eq!(
            GoTime::default().to_string(),
            "0001-01-01 00:00:00 +0000 UTC"
        );
        let s = "2017-03-04 05:06:07.123456789 -0700 MST";
        assert_eq!(GoTime::parse(s).map(|t| t.to_string()).as_deref(), Some(s));
        let s = "2017-03-04 05:06:07 +0530 IST";
        let t = GoTime::parse(s);
        assert_eq!(t.as_ref().map(|t| t.to_string()).as_deref(), Some(s));
        assert_eq!(t.map(|t| t.unix_seconds()), Some(1_488_584_167));
        // Go >= 1.9 monotonic suffix, bad dates, garbage: zero time.
        assert_eq!(
            GoTime::parse_lenient("2017-03-04 05:06:07 +0000 UTC m=+0.001"),
            GoTime::default()
        );
        assert_eq!(GoTime::parse("2017-02-30 05:06:07 +0000 UTC"), None);
        assert_eq!(GoTime::parse(""), None);
        assert_eq!(GoTime::parse("2017-0é-04 05:06:07 +0000 UTC"), None);
        assert_eq!(
            GoTime::from_unix(-1, 0).to_string(),
            "1969-12-31 23:59:59 +0000 UTC"
        );
    }
}
