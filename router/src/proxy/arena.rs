//! Per-request header values (request id, timestamps, joined X-Forwarded-For) without an allocation each.
//!
//! Values are written into a thread-local slab and split off as shared slices of it, so thousands of values share
//! one allocation; the slab is replaced when full and freed once the last value cut from it is dropped.

use bytes::BytesMut;
use http::HeaderValue;
use std::cell::RefCell;

const SLAB: usize = 64 * 1024;

thread_local! {
    static SLAB_BUF: RefCell<BytesMut> = RefCell::new(BytesMut::with_capacity(SLAB));
}

/// Builds a header value by appending to the slab. Returns `None` if the written bytes are not a valid value.
pub fn value(len_hint: usize, write: impl FnOnce(&mut BytesMut)) -> Option<HeaderValue> {
    SLAB_BUF.with(|cell| {
        let mut slab = cell.try_borrow_mut().ok()?;
        if slab.capacity() - slab.len() < len_hint {
            *slab = BytesMut::with_capacity(SLAB.max(len_hint));
        }
        write(&mut slab);
        HeaderValue::from_maybe_shared(slab.split().freeze()).ok()
    })
}

/// A fresh random UUID (v4), as a header value.
pub fn uuid() -> Option<HeaderValue> {
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let id = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut text).len();
    let bytes = text.get(..id)?;
    value(bytes.len(), |slab| slab.extend_from_slice(bytes))
}

/// A decimal number, as a header value.
pub fn number(n: u64) -> Option<HeaderValue> {
    let mut buffer = itoa::Buffer::new();
    let text = buffer.format(n);
    value(text.len(), |slab| slab.extend_from_slice(text.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_independent_slices() {
        let a = number(1234).unwrap();
        let b = uuid().unwrap();
        let c = value(5, |s| s.extend_from_slice(b"hello")).unwrap();
        assert_eq!(a, "1234");
        assert_eq!(b.len(), 36);
        assert_eq!(c, "hello");
        assert!(value(1, |s| s.extend_from_slice(b"\n")).is_none());
        assert_ne!(uuid().unwrap(), b);
    }
}
