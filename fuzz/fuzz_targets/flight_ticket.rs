//! Untrusted request bytes that reach Raindrop's own decoders: `DoGet`
//! tickets, `authorization` headers and every client-supplied name.
//!
//! Properties checked beyond "never panics":
//! - a ticket that decodes re-encodes to a ticket that decodes the same;
//! - a name that validates contains only characters that are safe in a
//!   storage path (no `/`, `.`, `%`, NUL, non-ASCII).
#![no_main]

use libfuzzer_sys::fuzz_target;
use raindrop::flight::auth::parse_authorization;
use raindrop::flight::ticket::StatementTicket;
use raindrop::tenant::names::{normalize_identifier, validate_project_id};

fn path_safe(s: &str, extra: &[u8]) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || extra.contains(&b)
        })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(ticket) = StatementTicket::decode_bytes(data) {
        let again = StatementTicket::decode_bytes(&ticket.encode().ticket).expect("re-decode");
        assert_eq!(again, ticket);
    }
    let text = String::from_utf8_lossy(data);
    let _ = parse_authorization(&text);
    if validate_project_id(&text).is_ok() {
        assert!(
            path_safe(&text, b"-"),
            "unsafe project id accepted: {text:?}"
        );
    }
    if let Ok(name) = normalize_identifier("table", &text) {
        assert!(path_safe(&name, b""), "unsafe name accepted: {name:?}");
    }
});
