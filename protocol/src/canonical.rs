//! Strict JSON parsing and RFC 8785 (JCS) canonical serialization for the restricted value set of
//! the wire contract: objects, arrays, strings, integers of magnitude ≤ 2^53 − 1, and booleans.
//! No floats and no `null`, so canonical number formatting is plain decimal integers.
//!
//! `serde_json` silently keeps the last of two equal keys; two parsers that disagree on which value
//! counts is how signature bypasses happen, so this parser refuses duplicate keys outright.

use crate::reason::Reason;
use crate::units::MAX_SAFE_INTEGER;
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use std::fmt;

/// Deepest nesting accepted. Our deepest message (a book snapshot) nests three levels.
pub const DEPTH_MAX: usize = 8;

/// Parses `bytes` as one JSON value within the restricted value set.
pub fn parse_strict(bytes: &[u8]) -> Result<Value, (Reason, String)> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = StrictSeed { depth: 0 }.deserialize(&mut deserializer).map_err(classify_error)?;
    deserializer.end().map_err(classify_error)?;
    Ok(value)
}

/// Our visitors tag their errors `"<reason code>: text"`; everything else serde_json reports is a
/// syntax error.
fn classify_error(error: serde_json::Error) -> (Reason, String) {
    let text = error.to_string();
    let reason = text.split_once(": ").and_then(|(code, _)| Reason::from_code(code)).unwrap_or(Reason::MalformedJson);
    (reason, text)
}

fn tagged<E: de::Error>(reason: Reason, text: impl fmt::Display) -> E {
    E::custom(format_args!("{}: {}", reason.code(), text))
}

struct StrictSeed {
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for StrictSeed {
    type Value = Value;
    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictSeed {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value without floats or nulls")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        if v.unsigned_abs() > MAX_SAFE_INTEGER as u64 {
            return Err(tagged(Reason::IntegerOutOfRange, format_args!("{v} exceeds 2^53-1")));
        }
        Ok(Value::from(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        if v > MAX_SAFE_INTEGER as u64 {
            return Err(tagged(Reason::IntegerOutOfRange, format_args!("{v} exceeds 2^53-1")));
        }
        Ok(Value::from(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        // serde_json hands integers beyond 64 bits over as f64 too; call those out of range.
        if v.fract() == 0.0 && v.abs() >= 9.2e18 {
            return Err(tagged(Reason::IntegerOutOfRange, "integer beyond 64 bits"));
        }
        Err(tagged(Reason::FloatNotAllowed, "numbers must be integers (no fraction or exponent)"))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Err(tagged(Reason::NullNotAllowed, "null is not allowed; omit the field instead"))
    }
    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        self.visit_unit()
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let depth = self.nested()?;
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(StrictSeed { depth })? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let depth = self.nested()?;
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                return Err(tagged(Reason::DuplicateKey, format_args!("key `{key}` appears twice")));
            }
            let value = map.next_value_seed(StrictSeed { depth })?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

impl StrictSeed {
    fn nested<E: de::Error>(&self) -> Result<usize, E> {
        if self.depth >= DEPTH_MAX {
            return Err(tagged(Reason::TooDeep, format_args!("nesting deeper than {DEPTH_MAX}")));
        }
        Ok(self.depth + 1)
    }
}

/// Checks that a value (e.g. one built from a typed message) lies in the restricted value set.
pub fn check_restricted(value: &Value) -> Result<(), Reason> {
    match value {
        Value::Null => Err(Reason::NullNotAllowed),
        Value::Bool(_) | Value::String(_) => Ok(()),
        Value::Number(number) => match number.as_i64() {
            Some(n) if n.unsigned_abs() <= MAX_SAFE_INTEGER as u64 => Ok(()),
            Some(_) => Err(Reason::IntegerOutOfRange),
            None if number.is_u64() => Err(Reason::IntegerOutOfRange),
            None => Err(Reason::FloatNotAllowed),
        },
        Value::Array(items) => items.iter().try_for_each(check_restricted),
        Value::Object(object) => object.values().try_for_each(check_restricted),
    }
}

/// RFC 8785 canonical bytes of a value in the restricted set: object members sorted by the UTF-16
/// code units of their keys, no insignificant whitespace, strings escaped as ECMAScript's
/// `JSON.stringify` does, integers in plain decimal.
pub fn canonical_bytes(value: &Value) -> Result<Vec<u8>, Reason> {
    check_restricted(value)?;
    let mut out = Vec::with_capacity(512);
    write_canonical(value, &mut out);
    Ok(out)
}

fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(number) => out.extend_from_slice(number.to_string().as_bytes()),
        Value::String(text) => write_string(text, out),
        Value::Array(items) => {
            out.push(b'[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        Value::Object(object) => {
            let mut members: Vec<(&String, &Value)> = object.iter().collect();
            members.sort_by(|(a, _), (b, _)| a.encode_utf16().cmp(b.encode_utf16()));
            out.push(b'{');
            for (index, (key, member)) in members.into_iter().enumerate() {
                if index > 0 {
                    out.push(b',');
                }
                write_string(key, out);
                out.push(b':');
                write_canonical(member, out);
            }
            out.push(b'}');
        }
    }
}

fn write_string(text: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    for ch in text.chars() {
        match ch {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\u{8}' => out.extend_from_slice(b"\\b"),
            '\u{c}' => out.extend_from_slice(b"\\f"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            c if (c as u32) < 0x20 => out.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes()),
            c => {
                let mut buffer = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buffer).as_bytes());
            }
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canonical(text: &str) -> String {
        let value = parse_strict(text.as_bytes()).expect("test input parses");
        String::from_utf8(canonical_bytes(&value).expect("restricted")).expect("utf-8")
    }

    #[test]
    fn members_are_sorted_and_whitespace_removed() {
        assert_eq!(canonical(r#"{ "b": 1, "a": [true, "x"] }"#), r#"{"a":[true,"x"],"b":1}"#);
    }

    #[test]
    fn keys_sort_by_utf16_code_units_not_utf8_bytes() {
        // U+10000 is a surrogate pair (0xD800…) and sorts before U+E000 in UTF-16, after it in UTF-8.
        assert_eq!(canonical("{\"\u{e000}\":1,\"\u{10000}\":2}"), "{\"\u{10000}\":2,\"\u{e000}\":1}");
    }

    #[test]
    fn strings_are_escaped_like_json_stringify() {
        assert_eq!(canonical(r#"["\u0001\n\"\\\/é\u2028"]"#), "[\"\\u0001\\n\\\"\\\\/é\u{2028}\"]");
    }

    #[test]
    fn duplicate_keys_are_refused() {
        assert_eq!(parse_strict(br#"{"a":1,"a":2}"#).unwrap_err().0, Reason::DuplicateKey);
    }

    #[test]
    fn floats_nulls_and_big_integers_are_refused() {
        assert_eq!(parse_strict(br#"{"a":1.0}"#).unwrap_err().0, Reason::FloatNotAllowed);
        assert_eq!(parse_strict(br#"{"a":1e3}"#).unwrap_err().0, Reason::FloatNotAllowed);
        assert_eq!(parse_strict(br#"{"a":null}"#).unwrap_err().0, Reason::NullNotAllowed);
        assert_eq!(parse_strict(br#"{"a":9007199254740992}"#).unwrap_err().0, Reason::IntegerOutOfRange);
        assert_eq!(parse_strict(br#"{"a":-9007199254740992}"#).unwrap_err().0, Reason::IntegerOutOfRange);
        assert_eq!(parse_strict(br#"{"a":123456789012345678901234567890}"#).unwrap_err().0, Reason::IntegerOutOfRange);
        assert!(parse_strict(br#"{"a":9007199254740991}"#).is_ok());
    }

    #[test]
    fn deep_nesting_and_trailing_bytes_are_refused() {
        assert_eq!(parse_strict(b"[[[[[[[[[[1]]]]]]]]]]").unwrap_err().0, Reason::TooDeep);
        assert_eq!(parse_strict(b"{} x").unwrap_err().0, Reason::MalformedJson);
        assert_eq!(parse_strict(b"{\"a\":").unwrap_err().0, Reason::MalformedJson);
    }
}
