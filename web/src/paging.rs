//! The one cursor scheme of every paged list endpoint: keyset cursors, opaque to clients, checked
//! before use, and the `X-Next-Cursor` / `Link: <…>; rel="next"` headers that hand them out.
//!
//! A cursor is the sort key of a page's last row (never an offset), written as lowercase hex: the
//! key's fields (integers as 8 bytes big-endian, texts with a 2-byte length) followed by the first
//! [`CHECK_BYTES`] bytes of SHA-256 over the list's name and those fields. The check is no secret
//! (a cursor only says where a page starts; every handler still scopes rows to the caller): it
//! turns a mistyped, truncated or edited cursor, or one handed to another list, into a 400
//! `invalid_cursor` instead of a wrong or silently empty page.

use crate::error::ApiError;
use actix_web::{HttpRequest, HttpResponseBuilder};
use sha2::{Digest, Sha256};

/// The response header naming the next page's cursor (absent on the last page).
pub const HEADER_NEXT_CURSOR: &str = "x-next-cursor";
/// Bytes of the check at a cursor's end: 32 bits make an edit that still passes unlikely.
pub const CHECK_BYTES: usize = 4;
/// Longest cursor accepted, in hex digits: the longest key (a device id and a seq, or a zone id and
/// a slot) with its check is well under it.
pub const CURSOR_LEN_MAX: usize = 256;

/// The list a cursor belongs to; its name is part of the check, so one list refuses another's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CursorKind {
    Readings,
    Trades,
    Statements,
    Zones,
    Tariffs,
    SilentDevices,
}

impl CursorKind {
    fn tag(self) -> &'static [u8] {
        match self {
            CursorKind::Readings => b"gridex/v1/cursor/readings",
            CursorKind::Trades => b"gridex/v1/cursor/trades",
            CursorKind::Statements => b"gridex/v1/cursor/statements",
            CursorKind::Zones => b"gridex/v1/cursor/zones",
            CursorKind::Tariffs => b"gridex/v1/cursor/tariffs",
            CursorKind::SilentDevices => b"gridex/v1/cursor/silent-devices",
        }
    }

    fn check(self, fields: &[u8]) -> [u8; CHECK_BYTES] {
        let digest = Sha256::new().chain_update(self.tag()).chain_update([0u8]).chain_update(fields).finalize();
        let mut check = [0u8; CHECK_BYTES];
        check.copy_from_slice(&digest[..CHECK_BYTES]);
        check
    }
}

/// The 400 answer to a cursor that is not one this server handed out for this list.
pub fn invalid_cursor() -> ApiError {
    ApiError::bad_request(
        "invalid_cursor",
        "cursor is not a value this list handed out: pass X-Next-Cursor of the previous page unchanged",
    )
}

/// Writes a cursor's fields in order.
#[derive(Debug)]
pub struct CursorWriter {
    kind: CursorKind,
    fields: Vec<u8>,
}

impl CursorWriter {
    pub fn new(kind: CursorKind) -> CursorWriter {
        CursorWriter { kind, fields: Vec::new() }
    }

    pub fn int(mut self, value: i64) -> CursorWriter {
        self.fields.extend_from_slice(&value.to_be_bytes());
        self
    }

    /// A text field: keys are identifiers (zone ids, device ids) of at most 64 bytes.
    pub fn text(mut self, value: &str) -> CursorWriter {
        debug_assert!(value.len() <= usize::from(u16::MAX), "a key is a short identifier");
        let len = u16::try_from(value.len()).unwrap_or(u16::MAX);
        let bytes = &value.as_bytes()[..usize::from(len)];
        self.fields.extend_from_slice(&len.to_be_bytes());
        self.fields.extend_from_slice(bytes);
        self
    }

    /// The cursor as clients see it.
    pub fn finish(self) -> String {
        let check = self.kind.check(&self.fields);
        let mut text = hex::encode(&self.fields);
        text.push_str(&hex::encode(check));
        text
    }
}

/// Reads a checked cursor's fields in the order they were written; any mismatch is
/// [`invalid_cursor`].
#[derive(Debug)]
pub struct CursorReader {
    fields: Vec<u8>,
    at: usize,
}

impl CursorReader {
    /// Decodes `text` and verifies its check for `kind`.
    pub fn open(kind: CursorKind, text: &str) -> Result<CursorReader, ApiError> {
        let lowercase_hex = text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if text.len() > CURSOR_LEN_MAX || !lowercase_hex {
            return Err(invalid_cursor());
        }
        let bytes = hex::decode(text).map_err(|_| invalid_cursor())?;
        let Some(split) = bytes.len().checked_sub(CHECK_BYTES) else {
            return Err(invalid_cursor());
        };
        let (fields, check) = bytes.split_at(split);
        if kind.check(fields) != check {
            return Err(invalid_cursor());
        }
        Ok(CursorReader { fields: fields.to_vec(), at: 0 })
    }

    fn take(&mut self, len: usize) -> Result<&[u8], ApiError> {
        let end = self.at.checked_add(len).filter(|end| *end <= self.fields.len()).ok_or_else(invalid_cursor)?;
        let taken = &self.fields[self.at..end];
        self.at = end;
        Ok(taken)
    }

    pub fn int(&mut self) -> Result<i64, ApiError> {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(self.take(8)?);
        Ok(i64::from_be_bytes(bytes))
    }

    pub fn text(&mut self) -> Result<String, ApiError> {
        let mut len = [0u8; 2];
        len.copy_from_slice(self.take(2)?);
        let bytes = self.take(usize::from(u16::from_be_bytes(len)))?;
        String::from_utf8(bytes.to_vec()).map_err(|_| invalid_cursor())
    }

    /// Refuses fields left over (a cursor of another shape).
    pub fn end(self) -> Result<(), ApiError> {
        if self.at == self.fields.len() {
            Ok(())
        } else {
            Err(invalid_cursor())
        }
    }
}

/// A page's length from the request's `limit`: `default` when absent, else 1..=`max`.
pub fn page_len(limit: Option<i64>, default: i64, max: i64) -> Result<i64, ApiError> {
    let limit = limit.unwrap_or(default);
    if !(1..=max).contains(&limit) {
        return Err(ApiError::bad_request("invalid_query", format!("limit is 1..={max}")));
    }
    Ok(limit)
}

/// Cuts rows loaded with one row more than `page_len` to the page; true when a next page exists.
pub fn cut_page<T>(rows: &mut Vec<T>, page_len: i64) -> bool {
    let page_len = usize::try_from(page_len).unwrap_or(usize::MAX);
    let more = rows.len() > page_len;
    rows.truncate(page_len);
    more
}

/// `X-Next-Cursor` and `Link: <…>; rel="next"` on a response with a next page: the request's
/// own path and query with `cursor` set to the next page's.
pub fn with_next_page(
    mut response: HttpResponseBuilder,
    request: &HttpRequest,
    next: Option<String>,
) -> HttpResponseBuilder {
    if let Some(cursor) = next {
        let mut query: Vec<&str> =
            request.query_string().split('&').filter(|part| !part.is_empty() && !part.starts_with("cursor=")).collect();
        let param = format!("cursor={cursor}");
        query.push(&param);
        let link = format!("<{}?{}>; rel=\"next\"", request.path(), query.join("&"));
        response.insert_header((HEADER_NEXT_CURSOR, cursor)).insert_header((actix_web::http::header::LINK, link));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write() -> String {
        CursorWriter::new(CursorKind::Statements).int(-7).text("zone-a").int(900_000).finish()
    }

    #[test]
    fn a_cursor_reads_back_the_fields_it_was_written_with() {
        let mut reader = CursorReader::open(CursorKind::Statements, &write()).expect("valid");
        assert_eq!(reader.int().expect("int"), -7);
        assert_eq!(reader.text().expect("text"), "zone-a");
        assert_eq!(reader.int().expect("int"), 900_000);
        reader.end().expect("nothing left");
    }

    #[test]
    fn an_edited_cursor_is_refused() {
        let cursor = write();
        for at in 0..cursor.len() {
            let mut edited = cursor.clone().into_bytes();
            edited[at] = if edited[at] == b'0' { b'1' } else { b'0' };
            let edited = String::from_utf8(edited).expect("ascii");
            assert!(CursorReader::open(CursorKind::Statements, &edited).is_err(), "edit at {at} is caught");
        }
        assert!(CursorReader::open(CursorKind::Statements, &cursor[..cursor.len() - 2]).is_err(), "truncated");
        assert!(CursorReader::open(CursorKind::Statements, "zz").is_err(), "not hex");
        assert!(CursorReader::open(CursorKind::Statements, "").is_err(), "empty");
        assert!(CursorReader::open(CursorKind::Statements, &cursor.to_uppercase()).is_err(), "not lowercase");
    }

    #[test]
    fn a_cursor_of_another_list_is_refused() {
        assert!(CursorReader::open(CursorKind::Trades, &write()).is_err());
    }

    #[test]
    fn a_cursor_of_another_shape_is_refused() {
        let cursor = CursorWriter::new(CursorKind::Trades).int(1).int(2).finish();
        let mut reader = CursorReader::open(CursorKind::Trades, &cursor).expect("checked");
        reader.int().expect("first");
        assert!(reader.end().is_err(), "a field left over");
        let mut reader = CursorReader::open(CursorKind::Trades, &cursor).expect("checked");
        reader.int().expect("first");
        reader.int().expect("second");
        assert!(reader.int().is_err(), "no third field");
    }

    #[test]
    fn a_page_is_cut_to_its_length_and_tells_whether_more_follow() {
        let mut rows = vec![1, 2, 3];
        assert!(cut_page(&mut rows, 2));
        assert_eq!(rows, [1, 2]);
        assert!(!cut_page(&mut rows, 2));
        assert!(page_len(Some(0), 10, 20).is_err());
        assert!(page_len(Some(21), 10, 20).is_err());
        assert_eq!(page_len(None, 10, 20).expect("default"), 10);
    }
}
