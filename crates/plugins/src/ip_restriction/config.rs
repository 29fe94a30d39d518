//! Configuration of the `ip_restriction` plugin.

use serde::Deserialize;

/// `config` of an `ip_restriction` plugin entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpRestrictionConfig {
    /// Only these ranges may use the route (when given).
    pub allow: Option<RangeList>,
    /// These ranges may not use the route (checked first).
    pub deny: Option<RangeList>,
    /// Proxies in front of the gateway whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Option<RangeList>,
}

/// A list of ranges: a YAML list, or one string with comma- or space-separated entries
/// (so one environment variable can hold the whole list), or a mix of both.
#[derive(Debug)]
pub enum RangeList {
    /// `"10.0.0.0/8, 192.168.0.0/16"`.
    One(String),
    /// `[10.0.0.0/8, "192.168.0.0/16,172.16.0.0/12"]`.
    Many(Vec<String>),
}

impl RangeList {
    /// The entries, split and trimmed, each with the index of the list item it came from.
    pub fn entries(&self) -> Vec<(Option<usize>, &str)> {
        fn split(s: &str) -> Vec<&str> {
            s.split([',', ' ', '\t', '\n'])
                .filter(|e| !e.is_empty())
                .collect()
        }
        match self {
            RangeList::One(s) => split(s).into_iter().map(|e| (None, e)).collect(),
            RangeList::Many(items) => items
                .iter()
                .enumerate()
                .flat_map(|(i, s)| split(s).into_iter().map(move |e| (Some(i), e)))
                .collect(),
        }
    }
}

impl<'de> Deserialize<'de> for RangeList {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RangeList;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a list of CIDR ranges or a comma-separated string of them")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RangeList, E> {
                Ok(RangeList::One(v.to_string()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<RangeList, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<String>()? {
                    items.push(item);
                }
                Ok(RangeList::Many(items))
            }
        }
        d.deserialize_any(V)
    }
}
