//! Lists every field of a `Deserialize` type by driving its derived `Deserialize` impl with
//! a deserializer that records what it is asked for: serde-derived structs name all their
//! fields in `deserialize_struct`, so the list comes from the model itself and a field added
//! to the model appears here without anyone writing it down.
//!
//! Every value the tracer hands out is the string `1s` (a valid duration, path and name),
//! the number 1 (for `deserialize_any`: scalar maps, YAML values, `ShardCount`), a
//! one-element sequence or map, or an enum's first variant, so that custom deserializers
//! accept it and the walk reaches every nested type. A test checks the walk is complete.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};

#[derive(Debug)]
pub struct Stop(String);

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Stop {}

impl de::Error for Stop {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Stop(msg.to_string())
    }
}

/// Field paths of `T` (`a.b`, `a[].b`, `a.*.b` for map values), sorted.
pub fn fields<'de, T: Deserialize<'de>>() -> BTreeSet<String> {
    let found = RefCell::new(BTreeSet::new());
    let _ = T::deserialize(Tracer {
        path: String::new(),
        found: &found,
        depth: 0,
    });
    found.into_inner()
}

struct Tracer<'a> {
    path: String,
    found: &'a RefCell<BTreeSet<String>>,
    depth: usize,
}

impl<'a> Tracer<'a> {
    fn child(&self, suffix: &str) -> Tracer<'a> {
        Tracer {
            path: format!("{}{suffix}", self.path),
            found: self.found,
            depth: self.depth + 1,
        }
    }
}

macro_rules! scalar {
    ($($method:ident),*) => {$(
        fn $method<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Stop> {
            v.visit_str("1s")
        }
    )*};
}

impl<'de> de::Deserializer<'de> for Tracer<'_> {
    type Error = Stop;

    // `any` is asked by scalar maps, YAML values and `ShardCount`: a number suits all three.
    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Stop> {
        v.visit_u64(1)
    }

    scalar!(
        deserialize_str,
        deserialize_string,
        deserialize_identifier,
        deserialize_char,
        deserialize_bytes,
        deserialize_byte_buf,
        deserialize_ignored_any,
        deserialize_unit
    );

    fn deserialize_bool<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Stop> {
        v.visit_bool(true)
    }
    fn deserialize_i8<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Stop> {
        v.visit_i64(1)
    }
    fn deserialize_i16<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Stop> {
        v.visit_i64(1)
    }
    fn deserialize_i32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Stop> {
        v.visit_i64(1)
    }
    fn deserialize_i64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Stop> {
        v.visit_i64(1)
    }
    fn deserialize_u8<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Stop> {
        v.visit_u64(1)
    }
    fn deserialize_u16<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Stop> {
        v.visit_u64(1)
    }
    fn deserialize_u32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Stop> {
        v.visit_u64(1)
    }
    fn deserialize_u64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Stop> {
        v.visit_u64(1)
    }
    fn deserialize_f32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Stop> {
        v.visit_f64(1.0)
    }
    fn deserialize_f64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Stop> {
        v.visit_f64(1.0)
    }
    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Stop> {
        v.visit_some(self)
    }
    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        v: V,
    ) -> Result<V::Value, Stop> {
        v.visit_unit()
    }
    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        v: V,
    ) -> Result<V::Value, Stop> {
        v.visit_newtype_struct(self)
    }
    fn deserialize_seq<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Stop> {
        v.visit_seq(One {
            tracer: Some(self.child("[]")),
        })
    }
    fn deserialize_tuple<V: Visitor<'de>>(self, _: usize, v: V) -> Result<V::Value, Stop> {
        self.deserialize_seq(v)
    }
    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: usize,
        v: V,
    ) -> Result<V::Value, Stop> {
        self.deserialize_seq(v)
    }
    fn deserialize_map<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Stop> {
        // A map's keys are the user's (parameter names, labels): its values' fields are
        // listed under `*`.
        v.visit_map(Fields {
            names: vec!["1s"],
            next: 0,
            tracer: self.child(".*"),
            record: false,
        })
    }
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Stop> {
        if self.depth > 16 {
            return Err(Stop("too deep".into()));
        }
        v.visit_map(Fields {
            names: fields.to_vec(),
            next: 0,
            tracer: self,
            record: true,
        })
    }
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        variants: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Stop> {
        let first = variants.first().copied().unwrap_or_default();
        v.visit_enum(first.into_deserializer())
    }
}

/// A sequence of one traced element.
struct One<'a> {
    tracer: Option<Tracer<'a>>,
}

impl<'de> de::SeqAccess<'de> for One<'_> {
    type Error = Stop;
    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Stop> {
        match self.tracer.take() {
            Some(t) => seed.deserialize(t).map(Some),
            None => Ok(None),
        }
    }
}

/// A struct's fields (recorded) or a map's single entry (not recorded).
struct Fields<'a> {
    names: Vec<&'static str>,
    next: usize,
    tracer: Tracer<'a>,
    record: bool,
}

impl<'de> de::MapAccess<'de> for Fields<'_> {
    type Error = Stop;
    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Stop> {
        let Some(name) = self.names.get(self.next) else {
            return Ok(None);
        };
        seed.deserialize(de::value::StrDeserializer::<Stop>::new(name))
            .map(Some)
    }
    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Stop> {
        let name = self.names[self.next];
        self.next += 1;
        let child = if self.record {
            let path = if self.tracer.path.is_empty() {
                name.to_string()
            } else {
                format!("{}.{name}", self.tracer.path)
            };
            self.tracer.found.borrow_mut().insert(path.clone());
            Tracer {
                path,
                found: self.tracer.found,
                depth: self.tracer.depth + 1,
            }
        } else {
            Tracer {
                path: self.tracer.path.clone(),
                found: self.tracer.found,
                depth: self.tracer.depth + 1,
            }
        };
        seed.deserialize(child)
    }
}
