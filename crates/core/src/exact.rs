//! Deserializers that read exactly what a field's JSON Schema says, where serde's derived
//! code reads something else, so that what the API's OpenAPI document accepts the API
//! accepts, and nothing more:
//! - integers as JSON Schema counts them: `2`, `2.0` and `2e3` are all integers there, while
//!   serde reads only the first as one (fractions and out-of-range values are still refused);
//! - objects never from arrays: serde's derived structs also read `[a, b]` by position.
//!
//! Used as `#[serde(deserialize_with = "exact::integer_option")]` and the like.

use serde::de::{DeserializeOwned, Deserializer, Error, Visitor};
use serde::Deserialize;
use std::fmt;
use std::marker::PhantomData;

/// One integral JSON number, converted to `T`.
struct Integral<T>(T);

impl<'de, T: TryFrom<i128>> Deserialize<'de> for Integral<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Number<T>(PhantomData<T>);

        impl<T: TryFrom<i128>> Number<T> {
            fn convert<E: Error>(&self, value: i128) -> Result<Integral<T>, E> {
                T::try_from(value).map(Integral).map_err(|_| E::custom(format!("integer {value} is out of range")))
            }
        }

        impl<T: TryFrom<i128>> Visitor<'_> for Number<T> {
            type Value = Integral<T>;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an integer")
            }

            fn visit_i64<E: Error>(self, value: i64) -> Result<Self::Value, E> {
                self.convert(i128::from(value))
            }

            fn visit_u64<E: Error>(self, value: u64) -> Result<Self::Value, E> {
                self.convert(i128::from(value))
            }

            fn visit_f64<E: Error>(self, value: f64) -> Result<Self::Value, E> {
                // i128 holds every integral f64 below 2^127; larger ones are out of any range here.
                if value.is_finite() && value.fract() == 0.0 && value.abs() < 1.7e38 {
                    return self.convert(value as i128);
                }
                Err(E::custom(format!("{value} is not an integer")))
            }
        }

        deserializer.deserialize_any(Number(PhantomData))
    }
}

pub fn integer<'de, D: Deserializer<'de>, T: TryFrom<i128>>(deserializer: D) -> Result<T, D::Error> {
    Integral::deserialize(deserializer).map(|i| i.0)
}

pub fn integer_option<'de, D: Deserializer<'de>, T: TryFrom<i128>>(deserializer: D) -> Result<Option<T>, D::Error> {
    Option::<Integral<T>>::deserialize(deserializer).map(|o| o.map(|i| i.0))
}

/// For patches: absent (`None`, with `#[serde(default)]`), `null` (`Some(None)`), or a value.
pub fn integer_present<'de, D: Deserializer<'de>, T: TryFrom<i128>>(
    deserializer: D,
) -> Result<Option<Option<T>>, D::Error> {
    integer_option(deserializer).map(Some)
}

pub fn integers<'de, D: Deserializer<'de>, T: TryFrom<i128>>(deserializer: D) -> Result<Vec<T>, D::Error> {
    Vec::<Integral<T>>::deserialize(deserializer).map(|v| v.into_iter().map(|i| i.0).collect())
}

/// A value that is never read from an array, whatever `T` would make of one.
fn not_array<E: Error, T: DeserializeOwned>(value: serde_json::Value) -> Result<T, E> {
    if value.is_array() {
        return Err(E::custom("expected an object or a name, not an array"));
    }
    T::deserialize(value).map_err(E::custom)
}

pub fn object_option<'de, D: Deserializer<'de>, T: DeserializeOwned>(deserializer: D) -> Result<Option<T>, D::Error> {
    Option::<serde_json::Value>::deserialize(deserializer)?.map(not_array).transpose()
}

/// For patches: absent (`None`, with `#[serde(default)]`), `null` (`Some(None)`), or a value.
pub fn object_present<'de, D: Deserializer<'de>, T: DeserializeOwned>(
    deserializer: D,
) -> Result<Option<Option<T>>, D::Error> {
    object_option(deserializer).map(Some)
}

pub fn objects<'de, D: Deserializer<'de>, T: DeserializeOwned>(deserializer: D) -> Result<Vec<T>, D::Error> {
    Vec::<serde_json::Value>::deserialize(deserializer)?.into_iter().map(not_array).collect()
}

pub fn objects_option<'de, D: Deserializer<'de>, T: DeserializeOwned>(
    deserializer: D,
) -> Result<Option<Vec<T>>, D::Error> {
    Option::<Vec<serde_json::Value>>::deserialize(deserializer)?
        .map(|values| values.into_iter().map(not_array).collect())
        .transpose()
}

#[cfg(test)]
mod tests {
    #[derive(serde::Deserialize, Debug, PartialEq)]
    struct Holder {
        #[serde(deserialize_with = "super::integer")]
        n: u32,
    }

    #[derive(serde::Deserialize, Debug, PartialEq)]
    struct Pair {
        a: Option<u8>,
        b: Option<u8>,
    }

    #[derive(serde::Deserialize, Debug, PartialEq)]
    struct Outer {
        #[serde(default, deserialize_with = "super::object_option")]
        pair: Option<Pair>,
    }

    #[test]
    fn objects_are_not_read_from_arrays() {
        let parsed = |json: &str| serde_json::from_str::<Outer>(json).ok();
        assert_eq!(parsed(r#"{"pair": {"a": 1}}"#), Some(Outer { pair: Some(Pair { a: Some(1), b: None }) }));
        assert_eq!(parsed(r#"{"pair": null}"#), Some(Outer { pair: None }));
        assert_eq!(parsed(r#"{}"#), Some(Outer { pair: None }));
        assert_eq!(parsed(r#"{"pair": [1, 2]}"#), None, "serde alone reads this as a=1, b=2");
        assert!(serde_json::from_str::<Pair>("[1, 2]").is_ok(), "which is why the check exists");
    }

    #[test]
    fn integral_numbers_in_any_notation_are_integers() {
        // (JSON, expected value, or None for a refusal)
        let cases: [(&str, Option<u32>); 9] = [
            ("7", Some(7)),
            ("7.0", Some(7)),
            ("7e2", Some(700)),
            ("4294967295", Some(u32::MAX)),
            ("4294967296", None),
            ("-1", None),
            ("7.5", None),
            ("1e400", None),
            ("\"7\"", None),
        ];
        for (json, expected) in cases {
            let parsed = serde_json::from_str::<Holder>(&format!("{{\"n\": {json}}}")).ok().map(|h| h.n);
            assert_eq!(parsed, expected, "{json}");
        }
    }
}
