//! `_bulk` encoding and the item-by-item reading of its response.
//!
//! A 200 answer can still carry `"errors": true`: every item is classified on its own. Throttled
//! and server-side failures (429, 5xx) are retried; the rest (a mapping error, a document too
//! large) are rejected for good and go to the dead-letter file.

use serde::Deserialize;

use crate::error::status_is_transient;

/// One encoded document: its action line and source line, ready to concatenate.
#[derive(Debug, Clone)]
pub struct EncodedDoc {
    pub id: String,
    pub lines: Vec<u8>,
}

/// An `index` action and its document. With a version, the write is refused when the stored
/// document has a higher one (`external_gte`): a `409 version_conflict_engine_exception` then counts as stored.
pub fn encode(index: &str, id: &str, version: Option<u64>, body: &[u8]) -> serde_json::Result<EncodedDoc> {
    let mut lines = Vec::with_capacity(body.len() + 128);
    // The action line written directly: no map built per document.
    action_line(&mut lines, "index", index, id, version)?;
    lines.extend_from_slice(body);
    lines.push(b'\n');
    Ok(EncodedDoc { id: id.to_string(), lines })
}

/// A `delete` action for the document `id` (no source line), versioned like [`encode`].
pub fn encode_delete(index: &str, id: &str, version: Option<u64>) -> serde_json::Result<EncodedDoc> {
    let mut lines = Vec::with_capacity(128);
    action_line(&mut lines, "delete", index, id, version)?;
    Ok(EncodedDoc { id: id.to_string(), lines })
}

fn action_line(out: &mut Vec<u8>, action: &str, index: &str, id: &str, version: Option<u64>) -> serde_json::Result<()> {
    out.extend_from_slice(b"{\"");
    out.extend_from_slice(action.as_bytes());
    out.extend_from_slice(b"\":{\"_index\":");
    serde_json::to_writer(&mut *out, index)?;
    out.extend_from_slice(b",\"_id\":");
    serde_json::to_writer(&mut *out, id)?;
    if let Some(v) = version {
        out.extend_from_slice(b",\"version\":");
        out.extend_from_slice(v.to_string().as_bytes());
        out.extend_from_slice(b",\"version_type\":\"external_gte\"");
    }
    out.extend_from_slice(b"}}\n");
    Ok(())
}

/// Splits documents into request bodies of at most `max_docs` documents and about `max_bytes`
/// (a single document larger than `max_bytes` still goes alone: Elasticsearch decides).
pub fn chunk(docs: &[EncodedDoc], max_docs: usize, max_bytes: usize) -> Vec<std::ops::Range<usize>> {
    let mut ranges = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, d) in docs.iter().enumerate() {
        let full = i > start && (i - start >= max_docs || bytes + d.lines.len() > max_bytes);
        if full {
            ranges.push(start..i);
            start = i;
            bytes = 0;
        }
        bytes += d.lines.len();
    }
    if start < docs.len() {
        ranges.push(start..docs.len());
    }
    ranges
}

/// One `_bulk` request body. `Bytes`, so that sending it again on a retry copies nothing.
pub fn body<'a>(docs: impl IntoIterator<Item = &'a EncodedDoc> + Clone) -> bytes::Bytes {
    let mut out = Vec::with_capacity(docs.clone().into_iter().map(|d| d.lines.len()).sum());
    for d in docs {
        out.extend_from_slice(&d.lines);
    }
    out.into()
}

/// The top of a `_bulk` response: whether any item failed, and how many items there are, read
/// without building the items (the common case needs nothing more).
#[derive(Debug, Deserialize)]
pub struct BulkSummary {
    #[serde(default)]
    pub errors: bool,
    pub items: Vec<serde::de::IgnoredAny>,
}

#[derive(Debug, Deserialize)]
pub struct BulkResponse {
    #[serde(default)]
    pub errors: bool,
    pub items: Vec<std::collections::HashMap<String, BulkItem>>,
}

#[derive(Debug, Deserialize)]
pub struct BulkItem {
    #[serde(rename = "_id")]
    pub id: Option<String>,
    pub status: u16,
    pub error: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BulkItemOutcome {
    Stored,
    /// Refused as older than what the index holds (a version conflict on a versioned write):
    /// nothing to do when the index's state came from this source later; counted apart, since
    /// it is also what an index written from a source with higher positions answers.
    Older,
    Retry {
        reason: String,
    },
    Rejected {
        status: u16,
        reason: String,
    },
}

/// Longest part of a reason kept from one error: Elasticsearch 8 and 9 quote the field's value
/// ("Preview of field's value: ..."), which can be as long as the document.
const REASON_PART: usize = 300;

/// `type: reason`, then each `caused_by` the same way (Elasticsearch 8 and 9 put the actual
/// cause, such as an immense term, there), every part cut at `REASON_PART` characters.
fn reason(item: &BulkItem) -> String {
    let Some(error) = &item.error else { return format!("status {}", item.status) };
    let mut parts = Vec::new();
    let mut cause = Some(error);
    while let Some(e) = cause.filter(|_| parts.len() < 4) {
        let kind = e.get("type").and_then(|t| t.as_str()).unwrap_or("error");
        let why = e.get("reason").and_then(|r| r.as_str()).unwrap_or("");
        let why: String = match why.char_indices().nth(REASON_PART) {
            Some((cut, _)) => format!("{}…", &why[..cut]),
            None => why.to_string(),
        };
        parts.push(format!("{kind}: {why}"));
        cause = e.get("caused_by");
    }
    parts.join("; caused by ")
}

fn is_version_conflict(item: &BulkItem) -> bool {
    item.error.as_ref().and_then(|e| e.get("type")).and_then(|t| t.as_str()) == Some("version_conflict_engine_exception")
}

/// Outcomes in request order. Errors when the response does not answer every document.
pub fn classify(resp: &BulkResponse, sent: usize) -> Result<Vec<BulkItemOutcome>, String> {
    if resp.items.len() != sent {
        return Err(format!("bulk response has {} items for {sent} documents sent", resp.items.len()));
    }
    Ok(resp
        .items
        .iter()
        .map(|entry| {
            let Some((action, item)) = entry.iter().next() else {
                return BulkItemOutcome::Retry { reason: "empty bulk item".into() };
            };
            match item.status {
                200..=299 => BulkItemOutcome::Stored,
                // Deleting a document that is not there: it is gone, which is what was asked.
                404 if action == "delete" => BulkItemOutcome::Stored,
                // The index holds a newer state than this write (a higher version): nothing to do.
                409 if is_version_conflict(item) => BulkItemOutcome::Older,
                s if status_is_transient(s) => BulkItemOutcome::Retry { reason: reason(item) },
                s => BulkItemOutcome::Rejected { status: s, reason: reason(item) },
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(id: usize, size: usize) -> EncodedDoc {
        EncodedDoc { id: id.to_string(), lines: vec![b'x'; size] }
    }

    #[test]
    fn chunks_respect_docs_and_bytes() {
        let docs: Vec<EncodedDoc> = (0..10).map(|i| doc(i, 100)).collect();
        assert_eq!(chunk(&docs, 4, 10_000), vec![0..4, 4..8, 8..10]);
        assert_eq!(chunk(&docs, 100, 250), vec![0..2, 2..4, 4..6, 6..8, 8..10]);
        let big = vec![doc(0, 10), doc(1, 1000), doc(2, 10)];
        assert_eq!(chunk(&big, 100, 100), vec![0..1, 1..2, 2..3]);
        assert!(chunk(&[], 10, 10).is_empty());
    }

    #[test]
    fn encoding_is_two_ndjson_lines() {
        let e = encode("movies", "a1", None, serde_json::json!({"title": "x\ny"}).to_string().as_bytes()).unwrap();
        let text = String::from_utf8(e.lines).unwrap();
        assert_eq!(text, "{\"index\":{\"_index\":\"movies\",\"_id\":\"a1\"}}\n{\"title\":\"x\\ny\"}\n");
        let action: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(action, serde_json::json!({"index": {"_index": "movies", "_id": "a1"}}));
    }

    /// A real response of Elasticsearch 7.10.2 to a bulk request against the `movies` mapping:
    /// created, updated, a strict-mapping rejection and a type error, saved from the local stack.
    #[test]
    fn real_mixed_response_is_read_item_by_item() {
        let raw = include_str!("../../tests/fixtures/bulk_mixed_response.json");
        let resp: BulkResponse = serde_json::from_str(raw).unwrap();
        assert!(resp.errors);
        let outcomes = classify(&resp, resp.items.len()).unwrap();
        let stored = outcomes.iter().filter(|o| **o == BulkItemOutcome::Stored).count();
        let rejected: Vec<&BulkItemOutcome> = outcomes.iter().filter(|o| matches!(o, BulkItemOutcome::Rejected { status: 400, .. })).collect();
        assert!(stored >= 2, "{outcomes:?}");
        assert!(rejected.len() >= 2, "{outcomes:?}");
        assert!(rejected.iter().any(|o| matches!(o, BulkItemOutcome::Rejected { reason, .. } if reason.contains("strict_dynamic_mapping_exception"))));
        assert!(classify(&resp, resp.items.len() + 1).is_err());
    }

    /// A real response of Elasticsearch 7.10.2 to deletes of a present and an absent document
    /// (and an index action): the absent one is `404 not_found`, and the response says no error.
    #[test]
    fn a_delete_of_an_absent_document_counts_as_done() {
        let raw = include_str!("../../tests/fixtures/bulk_delete_response.json");
        let resp: BulkResponse = serde_json::from_str(raw).unwrap();
        assert!(!resp.errors);
        let outcomes = classify(&resp, 3).unwrap();
        assert_eq!(outcomes, vec![BulkItemOutcome::Stored; 3]);
        // An index action answered 404 (the index vanished) is not done.
        let raw = r#"{"errors":true,"items":[{"index":{"_id":"1","status":404,"error":{"type":"index_not_found_exception","reason":"no such index"}}}]}"#;
        let resp: BulkResponse = serde_json::from_str(raw).unwrap();
        assert!(matches!(classify(&resp, 1).unwrap()[0], BulkItemOutcome::Rejected { status: 404, .. }));
        let d = encode_delete("movies", "a1", None).unwrap();
        assert_eq!(String::from_utf8(d.lines).unwrap(), "{\"delete\":{\"_index\":\"movies\",\"_id\":\"a1\"}}\n");
    }

    /// Elasticsearch 8.19's answer to a 20,000-character title (shape as seen on the matrix node):
    /// the field's value quoted at the top, the immense term in `caused_by`.
    #[test]
    fn nested_causes_are_kept_and_long_reasons_cut() {
        let preview = "Ж".repeat(20_000);
        let raw = serde_json::json!({"errors": true, "items": [{"index": {"_id": "1", "status": 400, "error": {
            "type": "document_parsing_exception",
            "reason": format!("[1:22] failed to parse field [title.raw] of type [keyword] in document with id '1'. Preview of field's value: '{preview}'"),
            "caused_by": {"type": "illegal_argument_exception", "reason": "Document contains at least one immense term in field=\"title.raw\""}
        }}}]});
        let resp: BulkResponse = serde_json::from_value(raw).unwrap();
        let BulkItemOutcome::Rejected { status: 400, reason } = &classify(&resp, 1).unwrap()[0] else { panic!() };
        assert!(reason.starts_with("document_parsing_exception: [1:22] failed to parse field [title.raw]"), "{reason}");
        assert!(reason.contains("; caused by illegal_argument_exception: Document contains at least one immense term"), "{reason}");
        assert!(reason.chars().count() < 1_000, "{} characters", reason.chars().count());
    }

    #[test]
    fn throttled_and_server_errors_are_retried() {
        let raw = r#"{"took":1,"errors":true,"items":[
            {"index":{"_index":"movies","_id":"1","status":429,"error":{"type":"es_rejected_execution_exception","reason":"rejected execution"}}},
            {"index":{"_index":"movies","_id":"2","status":503,"error":{"type":"unavailable_shards_exception","reason":"primary shard is not active"}}},
            {"index":{"_index":"movies","_id":"3","status":201}},
            {"index":{"_index":"movies","_id":"4","status":413,"error":{"type":"too_large","reason":"document too large"}}}]}"#;
        let resp: BulkResponse = serde_json::from_str(raw).unwrap();
        let o = classify(&resp, 4).unwrap();
        assert!(matches!(&o[0], BulkItemOutcome::Retry { reason } if reason.starts_with("es_rejected_execution_exception")));
        assert!(matches!(&o[1], BulkItemOutcome::Retry { .. }));
        assert_eq!(o[2], BulkItemOutcome::Stored);
        assert!(matches!(&o[3], BulkItemOutcome::Rejected { status: 413, .. }));
    }
}
