//! Lists from provider APIs are read with a cap on their number of entries, enforced
//! while parsing: a hostile or broken answer claiming millions of VMs is refused after
//! [`MAX_LIST_ENTRIES`] elements instead of being materialised (the response size limit
//! bounds the bytes; this bounds the per-entry allocations and the work that follows).

use std::fmt;
use std::marker::PhantomData;

use serde::de::{Deserialize, Deserializer, Error, SeqAccess, Visitor};

/// Entries accepted in one list: 100 times the 1,000 VMs per account vpswatch is built
/// for.
pub const MAX_LIST_ENTRIES: usize = 100_000;

/// A JSON array of at most [`MAX_LIST_ENTRIES`] entries.
#[derive(Debug)]
pub struct BoundedList<T>(pub Vec<T>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for BoundedList<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_seq(ListVisitor(PhantomData))
    }
}

struct ListVisitor<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for ListVisitor<T> {
    type Value = BoundedList<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a list of at most {MAX_LIST_ENTRIES} entries")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        // Never trust a size hint for the allocation.
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(item) = seq.next_element()? {
            if out.len() >= MAX_LIST_ENTRIES {
                return Err(A::Error::custom(format!(
                    "the list has more than {MAX_LIST_ENTRIES} entries; refused"
                )));
            }
            out.push(item);
        }
        Ok(BoundedList(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_the_number_of_entries() {
        let ok: BoundedList<u8> = serde_json::from_str("[1,2,3]").expect("small list");
        assert_eq!(ok.0, vec![1, 2, 3]);
        let big = format!("[{}0]", "0,".repeat(MAX_LIST_ENTRIES));
        let err = serde_json::from_str::<BoundedList<u8>>(&big).expect_err("too long");
        assert!(
            err.to_string().contains("more than 100000 entries"),
            "{err}"
        );
    }
}
