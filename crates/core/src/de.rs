//! A serde `Deserializer` over the line-numbered [`Node`] tree. Errors come back with the
//! path below the node that was deserialized and the line of the innermost node involved,
//! so `#[serde(deny_unknown_fields)]` and type errors read like
//! `routes[0].match.methods[1] (line 12): unknown variant ...`.

use std::fmt;

use serde::de::{self, DeserializeOwned, IntoDeserializer, Visitor};

use super::yaml::{Node, NodeKind};
use crate::diag::{Diag, Path};

/// A deserialization error with its location relative to the deserialized node.
#[derive(Debug)]
pub struct DeError {
    segments: Vec<String>,
    line: Option<usize>,
    message: String,
}

impl DeError {
    fn located(mut self, seg: Option<String>, line: usize) -> Self {
        if self.line.is_none() {
            self.line = Some(line);
        }
        if let Some(s) = seg {
            self.segments.push(s);
        }
        self
    }

    /// Turns the error into a diagnostic under `base`.
    pub fn into_diag(self, base: &Path) -> Diag {
        let mut path = base.to_string();
        for seg in self.segments.iter().rev() {
            if seg.starts_with('[') || path.is_empty() {
                path.push_str(seg);
            } else {
                path.push('.');
                path.push_str(seg);
            }
        }
        Diag {
            path,
            line: self.line,
            message: self.message,
        }
    }
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DeError {
            segments: Vec::new(),
            line: None,
            message: msg.to_string(),
        }
    }
}

/// Deserializes `node` into `T`, reporting a failure as a diagnostic under `path`.
pub fn from_node<T: DeserializeOwned>(node: &Node, path: &Path) -> Result<T, Diag> {
    T::deserialize(node).map_err(|e| e.into_diag(path))
}

fn invalid(node: &Node, exp: &dyn de::Expected) -> DeError {
    let unexp = match &node.kind {
        NodeKind::Null => de::Unexpected::Unit,
        NodeKind::Bool(b) => de::Unexpected::Bool(*b),
        NodeKind::Int(i) => de::Unexpected::Signed(*i),
        NodeKind::Float(f) => de::Unexpected::Float(*f),
        NodeKind::Str(s) => de::Unexpected::Str(s),
        NodeKind::Seq(_) => de::Unexpected::Seq,
        NodeKind::Map(_) => de::Unexpected::Map,
    };
    de::Error::invalid_type(unexp, exp)
}

macro_rules! number {
    ($($method:ident),*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
            // Quoted numbers (`port: "${PORT}"`) are accepted: interpolation often lands in quotes.
            match &self.kind {
                NodeKind::Str(s) => {
                    if let Ok(i) = s.trim().parse::<i64>() {
                        visitor.visit_i64(i)
                    } else if let Ok(f) = s.trim().parse::<f64>() {
                        visitor.visit_f64(f)
                    } else {
                        Err(invalid(self, &visitor))
                    }
                }
                _ => self.deserialize_any(visitor),
            }
            .map_err(|e| e.located(None, self.line))
        }
    )*};
}

impl<'de> de::Deserializer<'de> for &'de Node {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let r = match &self.kind {
            NodeKind::Null => visitor.visit_unit(),
            NodeKind::Bool(b) => visitor.visit_bool(*b),
            NodeKind::Int(i) => visitor.visit_i64(*i),
            NodeKind::Float(f) => visitor.visit_f64(*f),
            NodeKind::Str(s) => visitor.visit_borrowed_str(s),
            NodeKind::Seq(items) => visitor.visit_seq(SeqAccess {
                iter: items.iter().enumerate(),
                current: None,
            }),
            NodeKind::Map(entries) => visitor.visit_map(MapAccess {
                iter: entries.iter(),
                value: None,
            }),
        };
        r.map_err(|e| e.located(None, self.line))
    }

    number!(
        deserialize_i8,
        deserialize_i16,
        deserialize_i32,
        deserialize_i64,
        deserialize_u8,
        deserialize_u16,
        deserialize_u32,
        deserialize_u64,
        deserialize_f32,
        deserialize_f64
    );

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.kind {
            NodeKind::Str(s) if s == "true" => visitor.visit_bool(true),
            NodeKind::Str(s) if s == "false" => visitor.visit_bool(false),
            _ => self.deserialize_any(visitor),
        }
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        // Plain scalars that look like numbers are still valid strings (`name: 404`).
        match &self.kind {
            NodeKind::Int(i) => visitor.visit_string(i.to_string()),
            NodeKind::Float(f) => visitor.visit_string(f.to_string()),
            NodeKind::Bool(b) => visitor.visit_string(b.to_string()),
            _ => self.deserialize_any(visitor),
        }
        .map_err(|e| e.located(None, self.line))
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_string(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.kind {
            NodeKind::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        let r = match &self.kind {
            NodeKind::Str(s) => visitor.visit_enum(s.as_str().into_deserializer()),
            NodeKind::Map(entries) if entries.len() == 1 => visitor.visit_enum(EnumAccess {
                variant: &entries[0].0,
                value: &entries[0].1,
            }),
            _ => Err(invalid(self, &"a variant name or a single-key mapping")),
        };
        r.map_err(|e| e.located(None, self.line))
    }

    /// A value the target skips is not walked: `IgnoredAny` takes a unit as well.
    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        i128 u128 char bytes byte_buf unit unit_struct seq tuple
        tuple_struct map struct identifier
    }
}

struct SeqAccess<'de> {
    iter: std::iter::Enumerate<std::slice::Iter<'de, Node>>,
    current: Option<usize>,
}

impl<'de> de::SeqAccess<'de> for SeqAccess<'de> {
    type Error = DeError;

    fn next_element_seed<T: de::DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        match self.iter.next() {
            None => Ok(None),
            Some((i, node)) => {
                self.current = Some(i);
                seed.deserialize(node)
                    .map(Some)
                    .map_err(|e| e.located(Some(format!("[{i}]")), node.line))
            }
        }
    }
}

struct MapAccess<'de> {
    iter: std::slice::Iter<'de, (String, Node)>,
    value: Option<(&'de str, &'de Node)>,
}

impl<'de> de::MapAccess<'de> for MapAccess<'de> {
    type Error = DeError;

    fn next_key_seed<K: de::DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        match self.iter.next() {
            None => Ok(None),
            Some((k, v)) => {
                self.value = Some((k.as_str(), v));
                let key: de::value::BorrowedStrDeserializer<'de, DeError> =
                    de::value::BorrowedStrDeserializer::new(k);
                seed.deserialize(key)
                    .map(Some)
                    .map_err(|e| e.located(Some(k.clone()), v.line))
            }
        }
    }

    fn next_value_seed<V: de::DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, DeError> {
        match self.value.take() {
            Some((k, v)) => seed
                .deserialize(v)
                .map_err(|e| e.located(Some(k.to_string()), v.line)),
            None => Err(de::Error::custom("value requested before key")),
        }
    }
}

struct EnumAccess<'de> {
    variant: &'de str,
    value: &'de Node,
}

impl<'de> de::EnumAccess<'de> for EnumAccess<'de> {
    type Error = DeError;
    type Variant = VariantAccess<'de>;

    fn variant_seed<V: de::DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, Self::Variant), DeError> {
        let key: de::value::BorrowedStrDeserializer<'de, DeError> =
            de::value::BorrowedStrDeserializer::new(self.variant);
        let v = seed.deserialize(key)?;
        Ok((
            v,
            VariantAccess {
                name: self.variant,
                value: self.value,
            },
        ))
    }
}

struct VariantAccess<'de> {
    name: &'de str,
    value: &'de Node,
}

impl<'de> de::VariantAccess<'de> for VariantAccess<'de> {
    type Error = DeError;

    fn unit_variant(self) -> Result<(), DeError> {
        match self.value.kind {
            NodeKind::Null => Ok(()),
            _ => Err(invalid(self.value, &"nothing after a unit variant")),
        }
    }

    fn newtype_variant_seed<T: de::DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<T::Value, DeError> {
        seed.deserialize(self.value)
            .map_err(|e| e.located(Some(self.name.to_string()), self.value.line))
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, DeError> {
        de::Deserializer::deserialize_seq(self.value, visitor)
            .map_err(|e| e.located(Some(self.name.to_string()), self.value.line))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        de::Deserializer::deserialize_map(self.value, visitor)
            .map_err(|e| e.located(Some(self.name.to_string()), self.value.line))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::yaml::parse;
    use serde::Deserialize;
    use std::collections::HashMap;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        port: u16,
        #[serde(default)]
        tags: Vec<String>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        items: Vec<Inner>,
    }

    fn node(text: &str) -> Node {
        parse(text, &HashMap::new()).unwrap()
    }

    #[test]
    fn reports_unknown_keys_with_path_and_line() {
        let n = node("items:\n  - port: 1\n  - port: 2\n    colour: red\n");
        let d = from_node::<Outer>(&n, &Path::root().key("top")).unwrap_err();
        assert_eq!(d.path, "top.items[1].colour");
        assert_eq!(d.line, Some(4));
        assert!(
            d.message.contains("unknown field `colour`"),
            "{}",
            d.message
        );
    }

    #[test]
    fn reports_type_errors_at_the_value() {
        let n = node("items:\n  - port: 70000\n");
        let d = from_node::<Outer>(&n, &Path::root()).unwrap_err();
        assert_eq!(d.path, "items[0].port");
        assert_eq!(d.line, Some(2));
    }

    #[test]
    fn accepts_quoted_numbers_and_numeric_strings() {
        let n = node("items:\n  - port: \"8080\"\n    tags: [1, two]\n");
        let o = from_node::<Outer>(&n, &Path::root()).unwrap();
        assert_eq!(o.items[0].port, 8080);
        assert_eq!(o.items[0].tags, vec!["1", "two"]);
    }
}
